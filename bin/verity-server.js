#!/usr/bin/env node
import "../dist/cli/verity-server.js";
