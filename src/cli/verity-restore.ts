/**
 * verity-restore: rebuild a data directory from a snapshot archive (verity-backup snapshot) or from
 * a stream backup in S3 (verity-backup stream), up to a position, check it as `verity-admin verify`
 * does, and leave it ready to start as a new single-node cluster or as a member that rejoins.
 * docs/backup.md. Exit codes: 0 restored and verified, 1 refused or failed, 2 bad usage.
 */

import { hideBin } from "yargs/helpers";
import { cli } from "./common.js";
import { jsonFlag, runTool, s3Options, tlsFlags } from "../backup/cli-shared.js";
import { restoreCommand } from "../backup/restore-command.js";
import { encryptionConfigFlag } from "./at-rest-config.js";

const NAME = "verity-restore";

await cli(NAME, hideBin(process.argv), "Rebuild a VerityDB data directory from a snapshot or an S3 backup.", "verity-restore --source <F.tar.gz | s3://bucket/prefix/> --data-dir D [options]")
  .options({
    source: { type: "string", demandOption: true, describe: "A snapshot archive (.tar.gz) or a stream backup s3://bucket/prefix/" },
    "data-dir": { type: "string", demandOption: true, describe: "The data directory to create; must be empty (or --force)" },
    position: { type: "number", describe: "Restore the log up to this index (point in time); default: all the backup holds" },
    ...s3Options,
    force: { type: "boolean", default: false, describe: "Replace the VerityDB data (log/, meta/, state/, projections/) of a non-empty --data-dir" },
    "new-cluster": { type: "boolean", default: false, describe: "Start as a new single-node cluster (this node the only voter) instead of rejoining as a member" },
    "node-id": { type: "number", describe: "With --new-cluster: the node id to give it (default: the backed-up node's)" },
    peers: { type: "string", describe: "Rejoining: client addresses of the cluster's live members; the node votes only once it holds their commit index" },
    ...tlsFlags,
    ...encryptionConfigFlag,
    ...jsonFlag,
  })
  .example("$0 --source /backups/verity-12345.tar.gz --data-dir /var/lib/verity", "Restore a snapshot as the seed of a replaced member")
  .example("$0 --source s3://verity-backups/production/ --position 120000 --data-dir /var/lib/verity --new-cluster", "Point in time, as a new single-node cluster")
  .example("$0 --source /backups/verity-12345.tar.gz --data-dir /var/lib/verity --config /etc/verity/config.toml", "An encrypted snapshot: the config's [encryption] key reads it")
  .example("$0 --source s3://backups/prod/ --endpoint http://minio:9000 --force-path-style --data-dir /data --peers 10.0.0.2:7000,10.0.0.3:7000", "Rejoin, from MinIO")
  .parseAsync()
  .then((a) => runTool(NAME, a.json, () => restoreCommand(a)));
