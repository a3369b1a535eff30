/**
 * Encrypted SQLite (sqlite-encryption.ts): the event index and tenant projections keyed with their
 * own data keys, sidecars, wrong keys, tampered pages, missing sidecars, plaintext databases found
 * when encryption is turned on, a rebuild's new data key, and the query workers given the key.
 */

import { randomBytes, randomUUID } from "node:crypto";
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, unlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import Database from "better-sqlite3-multiple-ciphers";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import type { AtRestEncryption } from "../../src/crypto/at-rest.js";
import { projectionFileIdentity } from "../../src/crypto/encryption-context.js";
import { LocalKeyProvider, initLocalKeyFile, rotateLocalKeyFile } from "../../src/crypto/local-kms.js";
import { ErrorCode } from "../../src/errors.js";
import type { Decision } from "../../src/projections/apply-events.js";
import { EventStore } from "../../src/projections/event-store.js";
import { Projector, TenantProjections } from "../../src/projections/projector.js";
import { QueryPool } from "../../src/projections/query-pool.js";
import { keySidecarPath, readKeySidecar, rewrapSidecar } from "../../src/projections/sqlite-encryption.js";
import { verifyProjections } from "../../src/projections/verify-projections.js";
import { NodeFileSystem } from "../../src/log/node-fs.js";

const MARKER = "MARKER-7c1e-secret-payload";
const TENANT = "acme";

let root: string;
let keyFile: string;
let otherKeyFile: string;
let provider: LocalKeyProvider;
let otherProvider: LocalKeyProvider;
const clusterId = randomUUID();
let encryption: AtRestEncryption;
const dirs: string[] = [];

beforeAll(async () => {
  root = mkdtempSync(join(tmpdir(), "verity-sqlite-enc-"));
  keyFile = join(root, "master.key");
  otherKeyFile = join(root, "other.key");
  await initLocalKeyFile(keyFile);
  await initLocalKeyFile(otherKeyFile);
  provider = await LocalKeyProvider.open(keyFile);
  otherProvider = await LocalKeyProvider.open(otherKeyFile);
  encryption = { provider, clusterId };
});

afterAll(async () => {
  await provider.close();
  await otherProvider.close();
  rmSync(root, { recursive: true, force: true });
});

afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

function dataDir(): string {
  const d = mkdtempSync(join(root, "data-"));
  dirs.push(d);
  return d;
}

/** Every file under `dir`, recursively. */
function filesUnder(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? filesUnder(join(dir, e.name)) : [join(dir, e.name)]));
}

function expectNoMarker(dir: string): void {
  const files = filesUnder(dir);
  expect(files.length).toBeGreaterThan(0);
  for (const f of files) expect(readFileSync(f).includes(MARKER), `${f} holds the marker`).toBe(false);
}

function appended(tenant: string, stream: string, position: number, version: number, data: object): Decision {
  const bytes = Buffer.from(JSON.stringify(data));
  return {
    kind: "appended", tenant, stream, requestId: "",
    events: [{ position, tenant, stream, eventId: randomUUID(), type: "Added", data: bytes, metadata: {}, timestampMs: 0, batch: { requestId: "", expectedVersion: -1, index: 0, count: 1 } as never, version }],
    outcome: { ok: true, firstPosition: position, lastPosition: position, firstVersion: version, lastVersion: version },
  } as Decision;
}

/** A tenant with a migration, a projection and `events` events carrying the marker, in the event index. */
function seed(store: EventStore, events: number): Map<number, { stream: string; data: Uint8Array }> {
  const bodies = new Map<number, { stream: string; data: Uint8Array }>();
  store.transaction(() => {
    store.createTenant(TENANT, 1);
    store.addCommand(TENANT, 2, "migrate", JSON.stringify({ name: "m1", sql: "CREATE TABLE people (id TEXT PRIMARY KEY, name TEXT NOT NULL)" }));
    store.addCommand(TENANT, 3, "createProjection", JSON.stringify({
      definitionJson: JSON.stringify({ name: "people", handlers: [{ event_type: "Added", sql: "INSERT INTO people (id, name) VALUES (:id, :name)" }] }),
      fromStart: false,
    }));
    for (let i = 0; i < events; i++) {
      const stream = `${MARKER}-stream-${i}`;
      const d = appended(TENANT, stream, 4 + i, 0, { id: `id-${i}`, name: `${MARKER}-${i}` });
      store.record(d);
      if (d.kind === "appended") bodies.set(4 + i, { stream, data: d.events[0]!.data });
    }
  }, () => 3 + events);
  return bodies;
}

function loader(bodies: Map<number, { stream: string; data: Uint8Array }>) {
  return async (rows: readonly { position: number; stream: string; version: number }[]) =>
    rows.map((r) => ({ position: r.position, stream: r.stream, version: r.version, type: "Added", data: bodies.get(r.position)!.data, timestampMs: 0 }));
}

async function drain(projector: Projector, tenant: string, position: number): Promise<void> {
  projector.wake(tenant);
  expect(await projector.waitProjected(tenant, position, 10_000)).toBe(true);
}

describe("the event index, encrypted", () => {
  it("writes its key sidecar, holds no plaintext in the database, WAL or shm, and reopens", async () => {
    const dir = dataDir();
    const store = await EventStore.open(dir, { encryption });
    expect(existsSync(join(dir, "state", "events.key"))).toBe(true);
    seed(store, 50);
    expectNoMarker(join(dir, "state")); // WAL still holds the pages: none in the clear
    store.close();
    expectNoMarker(join(dir, "state"));
    const header = readFileSync(join(dir, "state", "events.sqlite")).subarray(0, 16);
    expect(header.toString("latin1")).not.toBe("SQLite format 3\0");
    const again = await EventStore.open(dir, { encryption });
    expect(again.appliedPosition).toBe(53);
    expect(again.tenantEvents(TENANT, 0, 100)).toHaveLength(50);
    again.close();
  });

  it("is refused with another master key (DATA_LOSS naming the sidecar), and without encryption (says what to do)", async () => {
    const dir = dataDir();
    (await EventStore.open(dir, { encryption })).close();
    await expect(EventStore.open(dir, { encryption: { provider: otherProvider, clusterId } })).rejects.toMatchObject({
      code: ErrorCode.CORRUPTION, message: expect.stringContaining("state/events.key"),
    });
    await expect(EventStore.open(dir, { encryption: { provider, clusterId: randomUUID() } })).rejects.toMatchObject({ code: ErrorCode.CORRUPTION });
    await expect(EventStore.open(dir)).rejects.toMatchObject({ code: ErrorCode.FAILED_PRECONDITION, message: expect.stringContaining("encryption") });
  });

  it("a tampered page is DATA_LOSS naming the file, never garbage", async () => {
    const dir = dataDir();
    const store = await EventStore.open(dir, { encryption });
    seed(store, 200);
    store.close();
    const path = join(dir, "state", "events.sqlite");
    const bytes = readFileSync(path);
    expect(bytes.length).toBeGreaterThan(3 * 4096);
    bytes[777]! ^= 0x01; // inside the first page (the schema, read at open)
    writeFileSync(path, bytes);
    let failure: unknown;
    try {
      const s = await EventStore.open(dir, { encryption });
      try {
        s.tenantEvents(TENANT, 0, 1000);
        s.tenantList();
      } finally {
        s.close();
      }
    } catch (e) {
      failure = e;
    }
    expect(failure).toMatchObject({ code: ErrorCode.CORRUPTION, message: expect.stringContaining("state/events.sqlite") });
  });

  it("a missing sidecar is DATA_LOSS that says the key is lost and how to rebuild", async () => {
    const dir = dataDir();
    const store = await EventStore.open(dir, { encryption });
    seed(store, 3);
    store.close();
    unlinkSync(join(dir, "state", "events.key"));
    await expect(EventStore.open(dir, { encryption })).rejects.toMatchObject({
      code: ErrorCode.CORRUPTION, message: expect.stringMatching(/key sidecar state\/events\.key is missing.*rebuild/s),
    });
  });

  it("a plaintext index found with encryption on is replaced by an empty encrypted one (rebuilt from the log)", async () => {
    const dir = dataDir();
    const plain = await EventStore.open(dir);
    seed(plain, 5);
    plain.close();
    expect(readFileSync(join(dir, "state", "events.sqlite")).includes(MARKER)).toBe(true);
    const warnings: string[] = [];
    const store = await EventStore.open(dir, { encryption, logger: { warn: (_o, m) => void warnings.push(m) } });
    expect(store.appliedPosition).toBe(0);
    expect(warnings.join()).toMatch(/plaintext.*rebuilt/);
    seed(store, 5);
    store.close();
    expectNoMarker(join(dir, "state"));
  });
});

describe("tenant projections, encrypted", () => {
  it("applies, queries through a worker given the key over IPC, rebuilds to a new data key with the same rows, and verifies", async () => {
    const dir = dataDir();
    const store = await EventStore.open(dir, { encryption });
    const bodies = seed(store, 40);
    const projector = new Projector({ store, dataDir: dir, load: loader(bodies), checkpointInterval: 10, encryption });
    const pool = new QueryPool({ workers: 1, timeoutMs: 10_000, rowsMax: 1000 });
    try {
      await drain(projector, TENANT, 43);
      const sidecar = keySidecarPath(projector.pathOf(TENANT));
      const before = readFileSync(sidecar);
      const digest = (await projector.tenant(TENANT)).digest();
      expectNoMarker(join(dir, "projections"));
      const q = await projector.query(pool, TENANT, { sql: "SELECT COUNT(*) AS n, MIN(name) AS first FROM people", params: {}, limit: 0 });
      expect(q.rows).toEqual([[40, `${MARKER}-0`]]);
      // PRAGMA key and the cipher functions stay refused in queries.
      await expect(projector.query(pool, TENANT, { sql: "PRAGMA key = 'x'", params: {}, limit: 0 })).rejects.toMatchObject({ code: ErrorCode.PERMISSION_DENIED });
      await expect(projector.query(pool, TENANT, { sql: "SELECT sqlite3mc_codec_data('cipher_salt')", params: {}, limit: 0 })).rejects.toMatchObject({ code: ErrorCode.PERMISSION_DENIED });
      // Without the key a worker cannot read it: DATA_LOSS naming the file.
      await expect(pool.query({ dbPath: projector.pathOf(TENANT), sql: "SELECT COUNT(*) FROM people", params: {}, limit: 0 })).rejects.toMatchObject({
        code: ErrorCode.CORRUPTION, message: expect.stringContaining("projections.sqlite"),
      });
      await expect(pool.query({ dbPath: projector.pathOf(TENANT), sql: "SELECT COUNT(*) FROM people", params: {}, limit: 0, key: randomBytes(32) })).rejects.toMatchObject({
        code: ErrorCode.CORRUPTION,
      });

      // projection rebuild: a new database with a new data key, the same rows.
      store.transaction(() => store.addCommand(TENANT, 44, "rebuildProjection", JSON.stringify({ name: "people" })), () => 44);
      await drain(projector, TENANT, 44);
      // Bounded wait for the rebuild to finish and the directory swap to happen.
      for (let i = 0; i < 200 && (await projector.tenant(TENANT)).hasRebuilding; i++) await new Promise((r) => setTimeout(r, 25));
      const after = readFileSync(sidecar);
      expect(after.equals(before)).toBe(false);
      expect((await readKeySidecar(sidecar, "projections.key"))!.wrappedKey.equals((await readKeySidecar(sidecar, "x"))!.wrappedKey)).toBe(true);
      expect((await projector.tenant(TENANT)).digest()).toBe(digest);
      expect(readdirSync(join(dir, "projections"))).toEqual([`tenant_${TENANT}`]);
      const again = await projector.query(pool, TENANT, { sql: "SELECT COUNT(*) FROM people", params: {}, limit: 0 });
      expect(again.rows).toEqual([[40]]);
      expectNoMarker(join(dir, "projections"));
    } finally {
      projector.close();
      await pool.close();
      store.close();
    }
    // The old key no longer opens the database; the new sidecar does (after a restart).
    const reopenedStore = await EventStore.open(dir, { encryption });
    const reopened = new Projector({ store: reopenedStore, dataDir: dir, load: async () => [], checkpointInterval: 10, encryption });
    try {
      expect((await reopened.tenant(TENANT)).appliedPosition).toBe(44);
    } finally {
      reopened.close();
      reopenedStore.close();
    }
    // verify needs the key provider, and passes with it.
    const without = await verifyProjections(new NodeFileSystem(), dir, 44);
    expect(without.ok).toBe(false);
    expect(without.notes.join()).toMatch(/--config/);
  });

  it("a projections database read with the wrong data key or tampered is DATA_LOSS naming the file", async () => {
    const dir = dataDir();
    const store = await EventStore.open(dir, { encryption });
    const bodies = seed(store, 100);
    const projector = new Projector({ store, dataDir: dir, load: loader(bodies), checkpointInterval: 10, encryption });
    await drain(projector, TENANT, 103);
    const path = projector.pathOf(TENANT);
    projector.close();
    const deps = { store, dataDir: dir, load: async () => [], checkpointInterval: 10 };
    expect(() => new TenantProjections(TENANT, path, deps, randomBytes(32))).toThrow(expect.objectContaining({ code: ErrorCode.CORRUPTION, message: expect.stringContaining(path) }));
    expect(() => new TenantProjections(TENANT, path, deps)).toThrow(expect.objectContaining({ code: ErrorCode.CORRUPTION }));
    // Another tenant's (validly wrapped) sidecar copied over this one does not unwrap: the context names the tenant.
    const sidecar = keySidecarPath(path);
    const header = (await readKeySidecar(sidecar, "s"))!;
    await expect(provider.unwrap(header.wrappedKey, { clusterId, fileIdentity: projectionFileIdentity("other") })).rejects.toMatchObject({ code: ErrorCode.CORRUPTION });
    const bytes = readFileSync(path);
    bytes[statSync(path).size - 100]! ^= 0x40; // the last page
    writeFileSync(path, bytes);
    const p2 = new Projector({ store, dataDir: dir, load: async () => [], checkpointInterval: 10, encryption });
    let failure: unknown;
    try {
      const t = await p2.tenant(TENANT);
      t.digest();
    } catch (e) {
      failure = e;
    } finally {
      p2.close();
      store.close();
    }
    expect(failure).toMatchObject({ code: ErrorCode.CORRUPTION, message: expect.stringContaining("projections.sqlite") });
  });

  it("rewrapSidecar moves a sidecar to the rotated key version without touching the database", async () => {
    const file = join(root, `rotating-${randomUUID()}.key`);
    await initLocalKeyFile(file);
    const rotating = await LocalKeyProvider.open(file);
    try {
      const dir = dataDir();
      const atRest = { provider: rotating, clusterId };
      const store = await EventStore.open(dir, { encryption: atRest });
      seed(store, 5);
      store.close();
      const dbBefore = readFileSync(join(dir, "state", "events.sqlite"));
      const sidecar = join(dir, "state", "events.key");
      expect(await rewrapSidecar(sidecar, rotating, { clusterId, fileIdentity: "state/events" })).toBe("unchanged");
      await rotateLocalKeyFile(file);
      await rotating.reload?.();
      const before = readFileSync(sidecar);
      expect(await rewrapSidecar(sidecar, rotating, { clusterId, fileIdentity: "state/events" })).toBe("rewrapped");
      expect(readFileSync(sidecar).equals(before)).toBe(false);
      expect(readFileSync(join(dir, "state", "events.sqlite")).equals(dbBefore)).toBe(true);
      const again = await EventStore.open(dir, { encryption: atRest });
      expect(again.appliedPosition).toBe(8);
      // The node's re-wrap hook (DataDir.registerRewrap "sqlite"): the event index's and every tenant's sidecar.
      const projector = new Projector({ store: again, dataDir: dir, load: async () => [], checkpointInterval: 10, encryption: atRest });
      try {
        await projector.tenant(TENANT);
        await rotateLocalKeyFile(file);
        await rotating.reload?.();
        const steps = [];
        for await (const step of projector.rewrapKeySidecars(atRest)) steps.push(step);
        expect(steps).toEqual([{ file: "state/events.key", rewrapped: true }, { file: `projections/tenant_${TENANT}/projections.key`, rewrapped: true }]);
        const twice = [];
        for await (const step of projector.rewrapKeySidecars(atRest)) twice.push(step.rewrapped);
        expect(twice).toEqual([false, false]);
      } finally {
        projector.close();
        again.close();
      }
      const reopened = await EventStore.open(dir, { encryption: atRest });
      reopened.close();
    } finally {
      await rotating.close();
    }
  });

  it("a plaintext tenant database is rebuilt encrypted; an encrypted one with encryption off is refused clearly", async () => {
    const dir = dataDir();
    const store = await EventStore.open(dir);
    const bodies = seed(store, 10);
    const plain = new Projector({ store, dataDir: dir, load: loader(bodies), checkpointInterval: 10 });
    await drain(plain, TENANT, 13);
    plain.close();
    expect(readFileSync(plain.pathOf(TENANT)).includes(MARKER) || readFileSync(plain.pathOf(TENANT) + "-wal").includes(MARKER)).toBe(true);
    const encrypted = new Projector({ store, dataDir: dir, load: loader(bodies), checkpointInterval: 10, encryption });
    await drain(encrypted, TENANT, 13);
    expect((await encrypted.tenant(TENANT)).digest()).toBeTruthy();
    encrypted.close();
    expectNoMarker(join(dir, "projections"));
    const off = new Projector({ store, dataDir: dir, load: loader(bodies), checkpointInterval: 10 });
    await expect(off.tenant(TENANT)).rejects.toMatchObject({ code: ErrorCode.FAILED_PRECONDITION, message: expect.stringContaining("encryption.enabled = true") });
    off.close();
    store.close();
    // A raw look with better-sqlite3-multiple-ciphers and no key: not a database.
    expect(() => new Database(plain.pathOf(TENANT), { readonly: true }).prepare("SELECT 1 FROM sqlite_schema").get()).toThrow(/not a database/);
  });
});
