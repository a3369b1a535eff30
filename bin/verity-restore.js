#!/usr/bin/env node
import "../dist/cli/verity-restore.js";
