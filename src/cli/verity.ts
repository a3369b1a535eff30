/** verity: the data-plane client (append, read, subscribe, query); commands arrive with the server's client API. */

import { hideBin } from "yargs/helpers";
import { cli } from "./common.js";

await cli("verity", hideBin(process.argv), "Append, read, subscribe to and query VerityDB event streams.", "verity <command> [options]")
  .demandCommand(1, "a command is required; this build has none yet (see --help)")
  .parseAsync();
