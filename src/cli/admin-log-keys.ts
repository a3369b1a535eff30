/**
 * `verity-admin log dump --config F` on an encrypted log: the key provider from the node's
 * `[encryption]` settings (as verity-server opens it), bound to the data directory's cluster id,
 * unwraps each segment's data key so that payloads can be shown. Read-only; keys stay in memory.
 */

import { join } from "node:path";
import { FailedPreconditionError } from "../errors.js";
import { readMetaState, uuidBytes } from "../log/meta-state.js";
import { NodeFileSystem } from "../log/node-fs.js";
import type { DumpCipherSource } from "../log/offline.js";
import { SegmentKeys } from "../log/segment-keys.js";
import { openNodeKeyProvider } from "../server/encryption-settings.js";
import { loadSettings } from "../server/settings.js";

export async function openDumpCiphers(configPath: string, dataDir: string): Promise<{ cipherFor: DumpCipherSource; close: () => Promise<void> }> {
  const loaded = loadSettings({ configFile: { path: configPath }, env: process.env, cwd: process.cwd() });
  if (!loaded.ok) throw new FailedPreconditionError(`--config ${configPath}: ${loaded.problems.join("; ")}`);
  const meta = await readMetaState(new NodeFileSystem(), join(dataDir, "meta", "state.json"), "meta/state.json");
  if (meta === undefined) throw new FailedPreconditionError(`${dataDir} has no meta/state.json: the cluster id the keys are bound to is unknown`);
  const quiet = { info: () => {}, warn: (_: object, msg: string) => process.stderr.write(`verity-admin: ${msg}\n`) };
  const opened = await openNodeKeyProvider(loaded.settings, quiet);
  if (opened === undefined) {
    throw new FailedPreconditionError(`--config ${configPath} has [encryption] enabled = false: it holds no key to decrypt the log with`);
  }
  const keys = new SegmentKeys({ provider: opened.provider, clusterId: meta.clusterId }, uuidBytes(meta.clusterId), quiet.warn);
  return {
    cipherFor: (header, file) => keys.cipherFor(header, file),
    close: async () => {
      keys.close();
      await opened.provider.close();
    },
  };
}
