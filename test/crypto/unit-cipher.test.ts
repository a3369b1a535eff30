import { randomBytes } from "node:crypto";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { CorruptionError, ErrorCode, grpcStatusOf, GrpcStatus } from "../../src/errors.js";
import { SegmentUnitCipher, type SealedUnit, type UnitRecord } from "../../src/crypto/unit-cipher.js";

const CLUSTER = randomBytes(16);
const KEY = randomBytes(32);
const FILE = "log/current.segment";
const AT = { file: FILE, offset: 4096 };

function cipher(overrides: { key?: Buffer; cluster?: Buffer; sequence?: number } = {}): SegmentUnitCipher {
  return new SegmentUnitCipher({ dataKey: overrides.key ?? KEY, clusterId: overrides.cluster ?? CLUSTER, segmentSequence: overrides.sequence ?? 7 });
}

/** Three records of 100, 1 and 50 bytes. */
const RECORDS: UnitRecord[] = [
  { term: 5, kind: 1, tenant: Buffer.from("acme"), payloadBytes: 100 },
  { term: 5, kind: 2, tenant: Buffer.alloc(0), payloadBytes: 1 },
  { term: 6, kind: 1, tenant: Buffer.from("bcme"), payloadBytes: 50 },
];
const FIRST = 1234;

function copy(u: SealedUnit): { nonce: Buffer; ciphertext: Buffer; tag: Buffer } {
  return { nonce: Buffer.from(u.nonce), ciphertext: Buffer.from(u.ciphertext), tag: Buffer.from(u.tag) };
}

function expectCorruption(run: () => unknown): CorruptionError {
  let caught: unknown;
  try {
    run();
  } catch (e) {
    caught = e;
  }
  expect(caught).toBeInstanceOf(CorruptionError);
  const error = caught as CorruptionError;
  expect(error.code).toBe(ErrorCode.CORRUPTION);
  expect(grpcStatusOf[error.code]).toBe(GrpcStatus.DATA_LOSS);
  expect(error.location).toEqual({ ...AT, index: FIRST });
  expect(error.message).toMatch(/unit of 3 record\(s\), indexes 1234\.\.1236/);
  return error;
}

describe("SegmentUnitCipher", () => {
  it("round-trips units of any record sizes; the ciphertext is as long as the plaintext; no plaintext shows", () => {
    const c = cipher();
    fc.assert(fc.property(fc.array(fc.uint8Array({ minLength: 1, maxLength: 700 }), { minLength: 1, maxLength: 40 }), (payloads) => {
      const records = payloads.map((p, i) => ({ term: 3, kind: 1 + (i % 5), tenant: Buffer.from(`t${i}`), payloadBytes: p.length }));
      const plaintext = Buffer.concat(payloads);
      const sealed = c.seal(10, records, plaintext);
      expect(sealed.ciphertext.length).toBe(plaintext.length);
      expect(sealed.nonce.length).toBe(12);
      expect(sealed.tag.length).toBe(16);
      expect(c.open(10, records, sealed, AT).equals(plaintext)).toBe(true);
    }), { numRuns: 100 });
    const secret = Buffer.from("card 4111111111111111 ".repeat(20));
    const sealed = c.seal(1, [{ term: 1, kind: 1, tenant: Buffer.alloc(0), payloadBytes: secret.length }], secret);
    expect(sealed.ciphertext.includes(Buffer.from("4111111111111111"))).toBe(false);
  });

  it("every single-bit flip of nonce, ciphertext or tag is a CorruptionError naming file, unit offset, first index and range", () => {
    const c = cipher();
    const plaintext = randomBytes(151);
    const sealed = copy(c.seal(FIRST, RECORDS, plaintext));
    for (const part of ["nonce", "ciphertext", "tag"] as const) {
      for (let bit = 0; bit < sealed[part].length * 8; bit += part === "ciphertext" ? 37 : 1) {
        const damaged = copy(sealed);
        damaged[part][bit >> 3]! ^= 1 << (bit & 7);
        expectCorruption(() => c.open(FIRST, RECORDS, damaged, AT));
      }
    }
  });

  it("binds the unit to its first index, count, every record's term, kind, tenant and payload length, segment, cluster and key", () => {
    const c = cipher();
    const plaintext = randomBytes(151);
    const sealed = copy(c.seal(FIRST, RECORDS, plaintext));
    const edits: Array<(r: UnitRecord[]) => UnitRecord[]> = [
      (r) => r.map((x, i) => (i === 1 ? { ...x, term: 6 } : x)),
      (r) => r.map((x, i) => (i === 2 ? { ...x, kind: 2 } : x)),
      (r) => r.map((x, i) => (i === 0 ? { ...x, tenant: Buffer.from("acmf") } : x)),
      (r) => r.map((x, i) => (i === 1 ? { ...x, tenant: Buffer.from("a") } : x)),
      // Bytes moved from one record's slice to the next: the total is the same.
      (r) => r.map((x, i) => (i === 0 ? { ...x, payloadBytes: 99 } : i === 1 ? { ...x, payloadBytes: 2 } : x)),
    ];
    for (const edit of edits) expectCorruption(() => c.open(FIRST, edit(RECORDS), sealed, AT));
    expectCorruption(() => cipher({ sequence: 8 }).open(FIRST, RECORDS, sealed, AT));
    expectCorruption(() => cipher({ cluster: randomBytes(16) }).open(FIRST, RECORDS, sealed, AT));
    expectCorruption(() => cipher({ key: randomBytes(32) }).open(FIRST, RECORDS, sealed, AT));
    let moved: unknown;
    try {
      c.open(FIRST + 1, RECORDS, sealed, AT);
    } catch (e) {
      moved = e;
    }
    expect(moved).toBeInstanceOf(CorruptionError);
    // A unit cut to its first two records (count and the last tag) does not authenticate either.
    let cut: unknown;
    try {
      c.open(FIRST, RECORDS.slice(0, 2), { ...sealed, ciphertext: sealed.ciphertext.subarray(0, 101) }, AT);
    } catch (e) {
      cut = e;
    }
    expect(cut).toBeInstanceOf(CorruptionError);
  });

  it("draws a fresh nonce for every unit, also for the same records at the same index", () => {
    const c = cipher();
    const plaintext = randomBytes(151);
    const nonces = new Set<string>();
    for (let i = 0; i < 3000; i++) nonces.add(c.seal(FIRST, RECORDS, plaintext).nonce.toString("hex"));
    expect(nonces.size).toBe(3000);
    expect(c.seals).toBe(3000);
  });

  it("refuses malformed units before sealing", () => {
    const c = cipher();
    expect(() => c.seal(0, RECORDS, randomBytes(151))).toThrow(/first index 0/);
    expect(() => c.seal(1, [], Buffer.alloc(0))).toThrow(/0 records/);
    expect(() => c.seal(1, RECORDS, randomBytes(150))).toThrow(/151 payload bytes/);
    expect(() => c.seal(1, [{ ...RECORDS[0]!, kind: 0 }], randomBytes(100))).toThrow(/kind 0/);
  });

  it("measures one AEAD call per 64 KiB unit of 256-byte records (printed, not asserted)", () => {
    const c = cipher();
    const records = Array.from({ length: 256 }, () => ({ term: 1, kind: 1, tenant: Buffer.from("bench"), payloadBytes: 256 }));
    const plaintext = randomBytes(256 * 256);
    for (let i = 0; i < 200; i++) c.open(1, records, c.seal(1, records, plaintext), AT); // let the JIT settle
    let n = 0;
    let sealed = c.seal(1, records, plaintext);
    let start = performance.now();
    while (performance.now() - start < 300) {
      sealed = c.seal(1, records, plaintext);
      n++;
    }
    const sealUs = ((performance.now() - start) * 1000) / (n * 256);
    n = 0;
    start = performance.now();
    while (performance.now() - start < 300) {
      c.open(1, records, sealed, AT);
      n++;
    }
    const openUs = ((performance.now() - start) * 1000) / (n * 256);
    process.stdout.write(`unit cipher, 256 x 256 B per unit: seal ${sealUs.toFixed(2)} us/record, open ${openUs.toFixed(2)} us/record\n`);
    expect(sealUs).toBeGreaterThan(0);
  });
});
