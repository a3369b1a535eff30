#!/usr/bin/env node
import "../dist/cli/verity-backup.js";
