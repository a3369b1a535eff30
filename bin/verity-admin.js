#!/usr/bin/env node
import "../dist/cli/verity-admin.js";
