/**
 * `verity-admin encryption status` and `encryption rotate` on a running node (issue 9): the node
 * owns its open segment files, so the Admin API does the work here (admin-service.ts).
 *
 * status: the provider's `describe()` (provider, key id, current version, where) and how many
 * segments use each key id and version, and how many are unencrypted.
 *
 * rotate: for `local`, a new key version in the master key file (rotateLocalKeyFile) and a reload
 * of the provider; for the other providers the KMS rotates key material itself, so only the
 * re-wrap runs. Then every segment header's data key is re-wrapped under the current version
 * (SegmentedLog.rewrapHeaders, crash-safe; bodies untouched), then the files of the hooks
 * registered on the data directory (DataDir.registerRewrap: projection key sidecars). It runs in
 * the background; `status` reports its progress. One rotation at a time.
 */

import { rotateLocalKeyFile } from "../crypto/local-kms.js";
import type { KeyDescription, KeyProvider } from "../crypto/kms.js";
import type { DataDir } from "../log/data-dir.js";
import type { Settings } from "./settings.js";
import { AdminError } from "./admin-service.js";

export type RewrapJobState = "idle" | "running" | "done" | "failed";

export interface RewrapJob {
  state: RewrapJobState;
  startedAtMs: number;
  finishedAtMs: number;
  keyVersion: string;
  segmentsDone: number;
  segmentsTotal: number;
  segmentsRewrapped: number;
  otherFilesDone: number;
  otherFilesRewrapped: number;
  currentFile: string;
  error: string;
}

export interface EncryptionStatusReport {
  enabled: boolean;
  provider: string;
  keyId: string;
  keyVersion: string;
  where: string;
  segments: number;
  unencryptedSegments: number;
  segmentsByKey: Array<{ keyId: string; keyVersion: string; segments: number }>;
  rewrap: RewrapJob;
}

/** Files a hook may report in one rotation at most (a bound on the loop; tenants are bounded far below). */
export const REWRAP_HOOK_FILES_MAX = 1_000_000;

interface Logger {
  info(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
}

function idleJob(): RewrapJob {
  return {
    state: "idle", startedAtMs: 0, finishedAtMs: 0, keyVersion: "", segmentsDone: 0, segmentsTotal: 0, segmentsRewrapped: 0,
    otherFilesDone: 0, otherFilesRewrapped: 0, currentFile: "", error: "",
  };
}

export class EncryptionAdmin {
  private job: RewrapJob = idleJob();
  private running: Promise<void> | undefined;

  constructor(
    private readonly dir: DataDir,
    private readonly settings: Settings["encryption"],
    private readonly logger: Logger,
  ) {}

  private provider(): KeyProvider {
    const encryption = this.dir.encryption;
    if (encryption === undefined) {
      throw new AdminError("FAILED_PRECONDITION",
        "at-rest encryption is off on this node: set [encryption] enabled = true with kms_provider and kms_key_id, and restart it " +
          "(verity-admin encryption init-local --output F makes a local master key file)");
    }
    return encryption.provider;
  }

  async status(): Promise<EncryptionStatusReport> {
    const segments = this.dir.log.segments();
    const byKey = new Map<string, { keyId: string; keyVersion: string; segments: number }>();
    for (const s of segments) {
      if (s.keyId === undefined) continue;
      const k = `${s.keyId}\n${s.keyVersion ?? ""}`;
      const entry = byKey.get(k) ?? { keyId: s.keyId, keyVersion: s.keyVersion ?? "", segments: 0 };
      entry.segments++;
      byKey.set(k, entry);
    }
    let description: KeyDescription | undefined;
    if (this.dir.encryption !== undefined) description = await this.dir.encryption.provider.describe();
    return {
      enabled: description !== undefined,
      provider: description?.provider ?? "",
      keyId: description?.keyId ?? "",
      keyVersion: description?.keyVersion ?? "",
      where: description?.where ?? "",
      segments: segments.length,
      unencryptedSegments: segments.filter((s) => s.keyId === undefined).length,
      segmentsByKey: [...byKey.values()],
      rewrap: { ...this.job },
    };
  }

  /** Starts a rotation (see the file comment); answers at once with the status, the job running. */
  async rotate(options: { rewrapOnly: boolean }): Promise<EncryptionStatusReport> {
    const provider = this.provider();
    if (this.running !== undefined) {
      throw new AdminError("FAILED_PRECONDITION", "a rotation is already running on this node; follow it with verity-admin encryption status");
    }
    if (provider.kind === "local" && !options.rewrapOnly) {
      const path = this.settings.kmsKeyId!;
      const rotated = await rotateLocalKeyFile(path);
      await reloadProvider(provider);
      this.logger.info({ key_id: rotated.keyId, key_version: rotated.keyVersion, versions: rotated.versions, key_file: path },
        "master key file rotated: new data keys use the new version; re-wrapping existing ones");
    } else {
      await reloadProvider(provider);
    }
    const description = await provider.describe();
    this.job = { ...idleJob(), state: "running", startedAtMs: Date.now(), keyVersion: description.keyVersion };
    this.running = this.run().finally(() => {
      this.running = undefined;
    });
    return this.status();
  }

  private async run(): Promise<void> {
    const job = this.job;
    try {
      await this.dir.log.rewrapHeaders((p) => {
        job.segmentsDone = p.done;
        job.segmentsTotal = p.total;
        job.segmentsRewrapped = p.rewrapped;
        job.currentFile = p.file;
      });
      const encryption = this.dir.encryption!;
      for (const { name, hook } of this.dir.rewrapHooks()) {
        // Bounded by REWRAP_HOOK_FILES_MAX files per hook.
        for await (const step of hook(encryption)) {
          job.otherFilesDone++;
          if (step.rewrapped) job.otherFilesRewrapped++;
          job.currentFile = step.file;
          if (job.otherFilesDone > REWRAP_HOOK_FILES_MAX) throw new Error(`re-wrap hook ${name} reported more than ${REWRAP_HOOK_FILES_MAX} files`);
        }
      }
      job.state = "done";
      job.currentFile = "";
      this.logger.info({ segments: job.segmentsTotal, rewrapped: job.segmentsRewrapped, other_files: job.otherFilesDone, key_version: job.keyVersion },
        "re-wrap of data keys finished");
    } catch (e) {
      job.state = "failed";
      job.error = e instanceof Error ? e.message : String(e);
      this.logger.error({ error: job.error, file: job.currentFile }, "re-wrap of data keys failed; run verity-admin encryption rotate --rewrap-only again once the cause is fixed");
    } finally {
      job.finishedAtMs = Date.now();
    }
  }

  /** Waits for a running rotation (at shutdown, before the log closes). */
  async close(): Promise<void> {
    await this.running;
  }
}

/** Re-reads key material held in memory (the local key file), when the provider can. */
async function reloadProvider(provider: KeyProvider): Promise<void> {
  const reloadable = provider as KeyProvider & { reload?: () => Promise<void> };
  if (typeof reloadable.reload === "function") await reloadable.reload();
}
