/**
 * verity-backup: `stream` uploads every sealed, committed segment of a node's log to S3 (or an
 * S3-compatible store) with a manifest, continuously or `--once`; `snapshot` writes a consistent
 * tar.gz of the log up to a position plus the projection state, while the node runs.
 * docs/backup.md says how each works and what it guarantees. Exit codes: 0 ok, 1 failed, 2 bad usage.
 */

import { hideBin } from "yargs/helpers";
import { cli } from "./common.js";
import { jsonFlag, runTool, s3Options, tlsFlags } from "../backup/cli-shared.js";
import { streamCommand } from "../backup/stream-command.js";
import { snapshotCommand } from "../backup/snapshot-command.js";
import { encryptionConfigFlag } from "./at-rest-config.js";

const NAME = "verity-backup";

await cli(NAME, hideBin(process.argv), "Back up a VerityDB node: stream sealed segments to S3, take point-in-time snapshots.", "verity-backup <command> [options]")
  .command(
    "stream",
    "Upload each sealed, committed log segment to S3 once, with a manifest; runs until stopped (or --once)",
    (y) =>
      y
        .options({
          source: { type: "string", demandOption: true, describe: "The node's log directory (<data_dir>/log) or its data directory" },
          destination: { type: "string", demandOption: true, describe: "Where the backup goes: s3://bucket/prefix/" },
          ...s3Options,
          once: { type: "boolean", default: false, describe: "Upload what is ready (sealed and committed) and exit, for cron" },
          "node-endpoint": { type: "string", describe: "Ask this node's Admin API (its client address) for the commit index instead of reading its event index" },
          ...tlsFlags,
          "metrics-address": { type: "string", describe: "Serve Prometheus metrics on host:port (GET /metrics)" },
          ...encryptionConfigFlag,
          ...jsonFlag,
        })
        .example("$0 stream --source /var/lib/verity/log --destination s3://verity-backups/production/", "Stream to AWS S3 until stopped")
        .example("$0 stream --source /var/lib/verity/log --destination s3://backups/prod/ --endpoint http://minio:9000 --force-path-style --once", "One pass against MinIO, for cron")
        .example("$0 stream --source /var/lib/verity/log --destination s3://backups/prod/ --metrics-address 127.0.0.1:9191", "With metrics for Prometheus"),
    (a) => runTool(NAME, a.json, () => streamCommand(a)),
  )
  .command(
    "snapshot",
    "Write a consistent tar.gz of the log up to a position plus projection state, while the node runs",
    (y) =>
      y
        .options({
          "data-dir": { type: "string", demandOption: true, describe: "The node's data directory" },
          position: { type: "number", describe: "The last log index to include (default: the current commit index); must be committed" },
          output: { type: "string", demandOption: true, describe: "The archive to write (.tar.gz); refused if it exists" },
          "node-endpoint": { type: "string", describe: "Ask this node's Admin API for the commit index instead of reading its event index" },
          ...tlsFlags,
          ...encryptionConfigFlag,
          ...jsonFlag,
        })
        .example("$0 snapshot --data-dir /var/lib/verity --position 12345 --output /backups/verity-12345.tar.gz", "The log up to index 12345")
        .example("$0 snapshot --data-dir /var/lib/verity --output /backups/verity-now.tar.gz", "Up to the current commit index")
        .example("$0 snapshot --data-dir /var/lib/verity --config /etc/verity/config.toml --output /backups/verity-now.tar.gz", "Encryption on: the archive is encrypted with the config's key"),
    (a) => runTool(NAME, a.json, () => snapshotCommand(a)),
  )
  .demandCommand(1, "a command is required: stream or snapshot (see --help)")
  .parseAsync();
