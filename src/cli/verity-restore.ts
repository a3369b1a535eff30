/** verity-restore: rebuild a data directory from a snapshot or an S3 backup (options arrive with the backup feature). */

import { hideBin } from "yargs/helpers";
import { cli } from "./common.js";

await cli("verity-restore", hideBin(process.argv), "Rebuild a VerityDB data directory from a snapshot or an S3 backup.")
  .demandCommand(1, "this build cannot restore yet (see --help)")
  .parseAsync();
