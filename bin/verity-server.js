#!/usr/bin/env node
import "../dist/src/cli/verity-server.js";
