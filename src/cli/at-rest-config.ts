/**
 * `--config <verity config file>` for the offline tools (verity-backup, verity-restore,
 * `verity-admin verify`): the node's `[encryption]` section, read by verity-server's own settings
 * loader and opened with openKeyProvider (the same retries and checks as a starting node), so the
 * tools unwrap data keys exactly as the node does. Nothing here is ever logged but the key's id.
 */

import type { AtRestEncryption } from "../crypto/at-rest.js";
import type { KeyProvider } from "../crypto/kms.js";
import { openKeyProvider } from "../crypto/open-key-provider.js";
import { FailedPreconditionError } from "../errors.js";
import type { FileSystem } from "../log/fs-port.js";
import { readMetaState } from "../log/meta-state.js";
import { encryptionSettingsOf } from "../server/encryption-settings.js";
import { loadSettings } from "../server/settings.js";
import { join } from "node:path";

/** The flag, for yargs `.options`. */
export const encryptionConfigFlag = {
  config: {
    type: "string",
    describe: "The node's verity-server config file: its [encryption] section gives the key provider for encrypted data (needed when encryption is on)",
  },
} as const;

/** The VERITY_* environment, as verity-server reads it. */
function verityEnvironment(): Record<string, string | undefined> {
  return Object.fromEntries(Object.entries(process.env).filter(([k]) => k.startsWith("VERITY_")));
}

/**
 * The key provider of the config file at `configPath`, or undefined when no file is given or its
 * encryption is off. A config with problems is refused with each problem listed. The caller closes it.
 */
export async function openConfiguredKeyProvider(configPath: string | undefined): Promise<KeyProvider | undefined> {
  if (configPath === undefined) return undefined;
  const loaded = loadSettings({ configFile: { path: configPath }, env: verityEnvironment() });
  if (!loaded.ok) {
    throw new FailedPreconditionError(`--config ${configPath} cannot be used: ${loaded.problems.join("; ")}. Fix it (verity-server --config ${configPath} --validate)`);
  }
  const settings = encryptionSettingsOf(loaded.settings.encryption);
  if (settings === undefined) return undefined;
  return (await openKeyProvider(settings)).provider;
}

/** The provider bound to the cluster id of the data directory `dataDir` (its meta/state.json). */
export async function atRestForDataDir(fs: FileSystem, dataDir: string, provider: KeyProvider | undefined): Promise<AtRestEncryption | undefined> {
  if (provider === undefined) return undefined;
  const meta = await readMetaState(fs, join(dataDir, "meta", "state.json"), "meta/state.json");
  if (meta === undefined) throw new FailedPreconditionError(`${dataDir} has no meta/state.json: it is not a VerityDB data directory`);
  return { provider, clusterId: meta.clusterId };
}
