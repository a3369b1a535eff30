/**
 * At-rest encryption on a real verity-server (issue 9): a local master key file made by
 * `verity-admin encryption init-local`; events carrying a marker string; the marker is in no file
 * under log/ or meta/ (SQLite files are the projections' encryption, tested there); status and
 * rotate through the Admin API; a restart reads everything back; a missing key file or one
 * readable by others stops the start with a clear message.
 */
import { spawnSync } from "node:child_process";
import { chmodSync, readFileSync, readdirSync, renameSync, statSync } from "node:fs";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { TestCa } from "../helpers/certs.js";
import { tempDir } from "../helpers/log-fixtures.js";
import { ProcessCluster, exited, until, type ProcessNode } from "../helpers/process-cluster.js";
import { VerityClient } from "../../src/client/verity-client.js";

const root = join(import.meta.dirname, "..", "..");
const tmp = tempDir("encryption-node");
const ca = new TestCa(join(tmp.path, "ca"));
const procs = new ProcessCluster(tmp.path, ca, 1);
const keyFile = join(tmp.path, "master.key");
const MARKER = "MARKER-c0ffee-plaintext-must-not-reach-the-disk";
const encryptionEnv = { VERITY_ENCRYPTION_ENABLED: "true", VERITY_ENCRYPTION_KMS_PROVIDER: "local", VERITY_ENCRYPTION_KMS_KEY_ID: keyFile };

afterAll(() => {
  procs.killAll();
  tmp.cleanup();
});

function admin(args: string[], node?: ProcessNode): { code: number; stdout: string; stderr: string } {
  const connection = node === undefined ? [] : ["--endpoints", `127.0.0.1:${node.client}`, "--tls-ca", ca.cert, "--tls-cert", procs.admin.cert, "--tls-key", procs.admin.key];
  const r = spawnSync(process.execPath, [join(root, "bin", "verity-admin.js"), ...args, ...connection], { encoding: "utf8", timeout: 60_000 });
  return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

/** Every file under `dir`, recursively (bounded by the test's own data directory). */
function filesUnder(dir: string): string[] {
  const out: string[] = [];
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) out.push(...filesUnder(path));
    else out.push(path);
  }
  return out;
}

async function stop(node: ProcessNode): Promise<void> {
  node.process!.kill("SIGTERM");
  await exited(node.process!);
}

describe("a node with at-rest encryption (local key file)", () => {
  it("writes no event payload to log/ or meta/, rotates, restarts and reads back; refuses a missing or readable key file", async () => {
    const init = admin(["encryption", "init-local", "--output", keyFile, "--json"]);
    expect(init.code, init.stderr).toBe(0);
    expect(JSON.parse(init.stdout)).toMatchObject({ path: keyFile, keyVersion: "1" });
    expect(statSync(keyFile).mode & 0o777).toBe(0o600);
    expect(admin(["encryption", "init-local", "--output", keyFile]).stderr).toMatch(/never overwrites/);

    const node = await procs.addNode(1);
    const clients = [{ identity: "writer", tenants: ["acme"] }];
    procs.start(node, { peers: [], clients, env: encryptionEnv });
    await until("a leader", () => procs.leaderOf([node]));
    expect(node.output).toMatch(/at-rest encryption on: key provider ready/);
    await procs.createTenants([node], "acme");
    const writer = ca.issue("writer");
    const client = new VerityClient({ endpoints: [`127.0.0.1:${node.client}`], tls: { ca: ca.cert, cert: writer.cert, key: writer.key }, attempts: 30 });
    for (let i = 0; i < 20; i++) {
      await client.append({ tenant: "acme", stream: `order-${i}`, events: [{ type: "Placed", data: { note: `${MARKER} #${i}` } }] });
    }
    const dataDir = join(tmp.path, "node1");
    for (const sub of ["log", "meta"]) {
      for (const file of filesUnder(join(dataDir, sub))) {
        expect(readFileSync(file).includes(MARKER), `${file} holds the marker in the clear`).toBe(false);
      }
    }

    const status = admin(["encryption", "status", "--json"], node);
    expect(status.code, status.stderr).toBe(0);
    const s = JSON.parse(status.stdout);
    expect(s).toMatchObject({ enabled: true, provider: "local", keyVersion: "1", unencryptedSegments: 0 });
    expect(s.segmentsByKey).toEqual([{ keyId: s.keyId, keyVersion: "1", segments: s.segments }]);

    const rotated = admin(["encryption", "rotate", "--json"], node);
    expect(rotated.code, rotated.stderr + rotated.stdout).toBe(0);
    const r = JSON.parse(rotated.stdout);
    expect(r.rewrap).toMatchObject({ state: "done", keyVersion: "2", segmentsTotal: s.segments, segmentsRewrapped: s.segments });
    expect(rotated.stderr).toMatch(/re-wrap: \d+\/\d+ segments/);
    const after = JSON.parse(admin(["encryption", "status", "--json"], node).stdout);
    expect(after.segmentsByKey).toEqual([{ keyId: s.keyId, keyVersion: "2", segments: s.segments }]);

    await stop(node);
    procs.start(node, { peers: [], clients, env: encryptionEnv });
    await until("a leader after the restart", () => procs.leaderOf([node]));
    const read = await client.read({ tenant: "acme", stream: "order-7" });
    expect(Buffer.from(read.events[0]!.data).toString()).toContain(`${MARKER} #7`);
    client.close();
    await stop(node);

    // The offline tools: verify needs no key; dump says payloads need --config.
    const verify = admin(["log", "verify", "--data-dir", dataDir, "--json"]);
    expect(verify.code, verify.stdout).toBe(0);
    const dump = admin(["log", "dump", "--data-dir", dataDir, "--limit", "3"]);
    expect(dump.stdout).toMatch(/\(encrypted\)/);
    expect(dump.stderr).toMatch(/pass --config/);

    chmodSync(keyFile, 0o644);
    procs.start(node, { peers: [], clients, env: encryptionEnv });
    expect(await exited(node.process!)).not.toBe(0);
    expect(node.output).toMatch(/chmod 600/);
    chmodSync(keyFile, 0o600);
    renameSync(keyFile, `${keyFile}.moved`);
    procs.start(node, { peers: [], clients, env: encryptionEnv });
    expect(await exited(node.process!)).not.toBe(0);
    expect(node.output).toMatch(/master\.key/);
  }, 120_000);
});
