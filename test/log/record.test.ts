import { describe, expect, it } from "vitest";
import fc from "fast-check";
import { decodeFrame, encodeFrame, frameBytes, inspectFrame } from "../../src/log/record.js";
import { decodeSegmentHeader, encodeSegmentHeader, EncryptionAlgorithm } from "../../src/log/segment-header.js";
import { decodeIndexFile, encodeIndexFile } from "../../src/log/sparse-index.js";
import { decodeMetaState, encodeMetaState } from "../../src/log/meta-state.js";
import { CorruptionError } from "../../src/errors.js";
import { RECORD_BYTES_MAX } from "../../src/limits.js";
import type { LogIndex } from "../../src/log/types.js";

const LIMITS = { payloadBytesMax: RECORD_BYTES_MAX };

function frame(termValue: number, index: number, kind: number, tenant: string, payload: Uint8Array): Buffer {
  const t = Buffer.from(tenant, "utf8");
  const buf = Buffer.alloc(frameBytes(t.length, payload.length));
  const end = encodeFrame(buf, 0, termValue, index, kind, t, payload);
  expect(end).toBe(buf.length);
  return buf;
}

describe("record framing", () => {
  it("round-trips every field, including 53-bit terms and indexes", () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER }),
        fc.integer({ min: 1, max: Number.MAX_SAFE_INTEGER }),
        fc.integer({ min: 1, max: 255 }),
        fc.string({ maxLength: 20 }),
        fc.uint8Array({ minLength: 1, maxLength: 2000 }),
        (t, index, kind, tenant, payload) => {
          const buf = frame(t, index, kind, tenant, payload);
          const r = decodeFrame(buf, 0, buf.length, LIMITS);
          expect(r.status).toBe("ok");
          if (r.status !== "ok") return;
          expect(r.entry.term).toBe(t);
          expect(r.entry.index).toBe(index);
          expect(r.entry.kind).toBe(kind);
          expect(r.entry.tenant).toBe(tenant);
          expect(Buffer.from(r.entry.payload).equals(Buffer.from(payload))).toBe(true);
          expect(r.frameBytes).toBe(buf.length);
        },
      ),
    );
  });

  it("detects every single-bit flip anywhere in a frame", () => {
    const buf = frame(7, 42, 2, "acme", Buffer.from("hello, world: an event payload"));
    for (let bit = 0; bit < buf.length * 8; bit++) {
      const damaged = Buffer.from(buf);
      damaged[bit >> 3]! ^= 1 << (bit & 7);
      const r = inspectFrame(damaged, 0, damaged.length, LIMITS);
      expect(r.status, `bit ${bit}`).not.toBe("ok");
    }
  });

  it("reports a frame cut short as incomplete, with the bytes it needs", () => {
    const buf = frame(1, 1, 1, "", Buffer.alloc(100, 1));
    for (const cut of [0, 4, 7, 8, 30, buf.length - 1]) {
      const r = inspectFrame(buf, 0, cut, LIMITS);
      expect(r.status).toBe("incomplete");
    }
  });

  it("never throws and never yields a record from random bytes", () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 4096 }), fc.nat(64), (bytes, start) => {
        const offset = Math.min(start, bytes.length);
        const r = decodeFrame(bytes, offset, bytes.length, LIMITS);
        expect(r.status).not.toBe("ok");
      }),
      { numRuns: 2000 },
    );
  });

  it("treats zero-filled space as invalid, never as a record", () => {
    const zeros = new Uint8Array(4096);
    expect(inspectFrame(zeros, 0, zeros.length, LIMITS).status).toBe("invalid");
  });
});

describe("segment header", () => {
  const header = {
    sequence: 12,
    clusterId: Buffer.from("00112233445566778899aabbccddeeff", "hex"),
    baseIndex: 12345 as LogIndex,
    encryption: { algorithm: EncryptionAlgorithm.NONE, keyId: new Uint8Array(0), wrappedKey: new Uint8Array(0) },
  };

  it("round-trips, reserving room for the encryption fields", () => {
    const withKey = { ...header, encryption: { algorithm: EncryptionAlgorithm.AES_256_GCM, keyId: Buffer.from("key-1"), wrappedKey: Buffer.alloc(200, 9) } };
    for (const h of [header, withKey]) {
      const r = decodeSegmentHeader(encodeSegmentHeader(h));
      expect(r.ok).toBe(true);
      if (!r.ok) return;
      expect(r.header.sequence).toBe(12);
      expect(r.header.baseIndex).toBe(12345);
      expect(Buffer.from(r.header.clusterId).equals(header.clusterId)).toBe(true);
      expect(Buffer.from(r.header.encryption.wrappedKey).equals(Buffer.from(h.encryption.wrappedKey))).toBe(true);
    }
  });

  it("refuses any damaged header and any random bytes", () => {
    const good = encodeSegmentHeader(header);
    for (let i = 0; i < good.length; i++) {
      const bad = Buffer.from(good);
      bad[i]! ^= 0x10;
      expect(decodeSegmentHeader(bad).ok, `byte ${i}`).toBe(false);
    }
    fc.assert(fc.property(fc.uint8Array({ maxLength: 600 }), (bytes) => {
      expect(decodeSegmentHeader(bytes).ok).toBe(false);
    }));
  });
});

describe("index file and meta state decoders", () => {
  it("round-trip and refuse random or damaged bytes", () => {
    const content = {
      baseIndex: 1, lastIndex: 900, segmentBytes: 1 << 20, headerCrc: 0xdeadbeef,
      entries: [[1, 512], [300, 70000]] as Array<[number, number]>,
      termRuns: [{ firstIndex: 1 as LogIndex, term: 1 as never }, { firstIndex: 500 as LogIndex, term: 3 as never }],
    };
    const bytes = encodeIndexFile(content);
    expect(decodeIndexFile(bytes)).toEqual(content);
    const bad = Buffer.from(bytes);
    bad[30]! ^= 1;
    expect(decodeIndexFile(bad)).toBeUndefined();
    fc.assert(fc.property(fc.uint8Array({ maxLength: 300 }), (b) => {
      expect(decodeIndexFile(b)).toBeUndefined();
    }));
  });

  it("meta state round-trips; damage and random bytes raise CorruptionError", () => {
    const state = { nodeId: 3, clusterId: "01234567-89ab-cdef-0123-456789abcdef", term: 9, vote: 2 };
    const bytes = encodeMetaState(state);
    expect(decodeMetaState(bytes, "meta/state.json")).toEqual(state);
    const tampered = Buffer.from(Buffer.from(bytes).toString("utf8").replace('"term":9', '"term":1'));
    expect(() => decodeMetaState(tampered, "meta/state.json")).toThrow(CorruptionError);
    fc.assert(fc.property(fc.uint8Array({ maxLength: 200 }), (b) => {
      expect(() => decodeMetaState(b, "meta/state.json")).toThrow(CorruptionError);
    }));
  });
});
