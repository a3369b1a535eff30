/** verity-backup: continuous S3 segment streaming and point-in-time snapshots (commands arrive with the backup feature). */

import { hideBin } from "yargs/helpers";
import { cli } from "./common.js";

await cli("verity-backup", hideBin(process.argv), "Back up a VerityDB node: stream sealed segments to S3, take point-in-time snapshots.", "verity-backup <command> [options]")
  .demandCommand(1, "a command is required; this build has none yet (see --help)")
  .parseAsync();
