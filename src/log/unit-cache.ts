/**
 * A small LRU of decrypted units (docs/log-format.md, "In an encrypted segment"). A read of one
 * record must open its whole unit (up to UNIT_PAYLOAD_BYTES_MAX of payload, one AEAD call); the
 * next read of a nearby record (Raft replication and catch-up read forward in small steps, the
 * projector reads what was just appended) finds the unit here instead of reading and decrypting it
 * again. Only units that authenticated are kept.
 *
 * Bounds: at most DECRYPTED_UNITS_CACHED_MAX units and DECRYPTED_UNIT_CACHE_BYTES_MAX bytes of
 * plaintext; a unit larger than an eighth of that is not kept. Evicted plaintext is zeroed.
 * Callers get copies of payloads, never the cached buffers. The log clears the cache on every
 * suffix truncation (a unit is rewritten in place then) and when it closes.
 */

import { DECRYPTED_UNITS_CACHED_MAX, DECRYPTED_UNIT_CACHE_BYTES_MAX } from "../crypto/crypto-limits.js";
import type { LogEntry } from "./types.js";

/** One authenticated unit of a segment. */
export interface DecryptedUnit {
  /** The segment's sequence number. */
  readonly sequence: number;
  /** File offsets of the unit's first frame and just past its last. */
  readonly start: number;
  readonly end: number;
  /** Its records, in index order (payloads are views into one plaintext buffer). */
  readonly entries: readonly LogEntry[];
  /** Bytes of plaintext the unit holds. */
  readonly bytes: number;
}

export class DecryptedUnitCache {
  /** Insertion order is recency order (oldest first). Invariant: size <= DECRYPTED_UNITS_CACHED_MAX. */
  private readonly units = new Map<string, DecryptedUnit>();
  /** Invariant: heldBytes <= DECRYPTED_UNIT_CACHE_BYTES_MAX. */
  private heldBytes = 0;

  /** The unit of segment `sequence` that holds `index`, if cached (marked most recently used). */
  find(sequence: number, index: number): DecryptedUnit | undefined {
    // Bounded: at most DECRYPTED_UNITS_CACHED_MAX entries.
    for (const [key, unit] of this.units) {
      const first = unit.entries[0]!.index;
      if (unit.sequence === sequence && index >= first && index < first + unit.entries.length) {
        this.units.delete(key);
        this.units.set(key, unit);
        return unit;
      }
    }
    return undefined;
  }

  /** Keeps `unit` (which authenticated), evicting the least recently used as needed. */
  put(unit: DecryptedUnit): void {
    if (unit.bytes > DECRYPTED_UNIT_CACHE_BYTES_MAX / 8) return;
    const key = `${unit.sequence}:${unit.start}`;
    const old = this.units.get(key);
    if (old !== undefined) this.drop(key, old);
    // Bounded: each pass evicts one entry.
    while (this.units.size >= DECRYPTED_UNITS_CACHED_MAX || this.heldBytes + unit.bytes > DECRYPTED_UNIT_CACHE_BYTES_MAX) {
      const [oldestKey, oldest] = this.units.entries().next().value!;
      this.drop(oldestKey, oldest);
    }
    this.units.set(key, unit);
    this.heldBytes += unit.bytes;
  }

  /** Forgets every unit (a truncation rewrote units in place, or the log is closing). */
  clear(): void {
    for (const [key, unit] of [...this.units]) this.drop(key, unit);
  }

  get size(): number {
    return this.units.size;
  }

  private drop(key: string, unit: DecryptedUnit): void {
    this.units.delete(key);
    this.heldBytes -= unit.bytes;
    const first = unit.entries[0]?.payload;
    if (first !== undefined) Buffer.from(first.buffer, first.byteOffset, unit.bytes).fill(0);
  }
}
