/**
 * Parsing and printing of the value kinds that appear in settings: sizes ("64MB"), durations
 * ("150ms"), host:port addresses, and the "did you mean" suggestion for misspelled names.
 *
 * Every parser returns `{ ok: true, value }` or `{ ok: false, reason }`; the reason is a phrase that
 * completes "<key> = <value>: ...", so the caller can name the key and where it came from.
 */

import { Units } from "../limits.js";

export type Parsed<T> = { ok: true; value: T } | { ok: false; reason: string };

export function accept<T>(value: T): Parsed<T> {
  return { ok: true, value };
}

export function refuse<T = never>(reason: string): Parsed<T> {
  return { ok: false, reason };
}

// ---- Sizes. KB, MB, GB, TB are binary (1MB = 1024KB), as in src/limits.ts; KiB, MiB, ... mean the same. ----

const SIZE_UNITS: ReadonlyMap<string, number> = new Map([
  ["b", 1],
  ["kb", Units.KiB], ["kib", Units.KiB], ["k", Units.KiB],
  ["mb", Units.MiB], ["mib", Units.MiB], ["m", Units.MiB],
  ["gb", Units.GiB], ["gib", Units.GiB], ["g", Units.GiB],
  ["tb", Units.GiB * 1024], ["tib", Units.GiB * 1024], ["t", Units.GiB * 1024],
]);

const SIZE_PATTERN = /^(\d{1,15}(?:\.\d{1,6})?)\s*([a-z]*)$/i;

/** Parses "64MB", "1.5GB", "512KB", "4096" (bytes) or a TOML integer (bytes). */
export function parseSize(raw: unknown): Parsed<number> {
  if (typeof raw === "number") {
    return Number.isSafeInteger(raw) && raw >= 0 ? accept(raw) : refuse("a size must be a whole number of bytes or a string like \"64MB\"");
  }
  if (typeof raw !== "string") return refuse(`must be a size like "64MB", not ${kindOf(raw)}`);
  const match = SIZE_PATTERN.exec(raw.trim());
  const unit = SIZE_UNITS.get((match?.[2] ?? "").toLowerCase() || "b");
  if (match === null || unit === undefined) {
    return refuse('is not a size: write a number and a unit, like "512KB", "64MB" or "1GB"');
  }
  const bytes = Number(match[1]) * unit;
  if (!Number.isSafeInteger(bytes)) return refuse("is not a whole number of bytes");
  return accept(bytes);
}

/** Prints bytes in the largest unit that divides them exactly: 67108864 -> "64MB", 1000 -> "1000B". */
export function formatSize(bytes: number): string {
  for (const [unit, size] of [["TB", Units.GiB * 1024], ["GB", Units.GiB], ["MB", Units.MiB], ["KB", Units.KiB]] as const) {
    if (bytes >= size && bytes % size === 0) return `${bytes / size}${unit}`;
  }
  return `${bytes}B`;
}

// ---- Durations. ----

const DURATION_UNITS: ReadonlyMap<string, number> = new Map([
  ["ms", 1],
  ["s", 1000],
  ["m", 60_000],
  ["h", 3_600_000],
]);

const DURATION_PATTERN = /^(\d{1,12}(?:\.\d{1,6})?)\s*([a-z]*)$/i;

/** Parses "100ms", "2s", "1.5s", "1m". A bare number is refused: its unit would be a guess. */
export function parseDuration(raw: unknown): Parsed<number> {
  if (typeof raw === "number") return refuse(`needs a unit: write "${raw}ms" or "${raw}s"`);
  if (typeof raw !== "string") return refuse(`must be a duration like "150ms" or "2s", not ${kindOf(raw)}`);
  const match = DURATION_PATTERN.exec(raw.trim());
  if (match !== null && match[2] === "") return refuse(`needs a unit: write "${match[1]}ms" or "${match[1]}s"`);
  const unit = DURATION_UNITS.get((match?.[2] ?? "").toLowerCase());
  if (match === null || unit === undefined) {
    return refuse('is not a duration: write a number and a unit (ms, s, m, h), like "150ms" or "2s"');
  }
  const ms = Number(match[1]) * unit;
  if (!Number.isSafeInteger(ms)) return refuse("is not a whole number of milliseconds");
  return accept(ms);
}

/** Prints milliseconds in the largest unit that divides them exactly: 2000 -> "2s", 150 -> "150ms". */
export function formatDuration(ms: number): string {
  for (const [unit, size] of [["h", 3_600_000], ["m", 60_000], ["s", 1000]] as const) {
    if (ms >= size && ms % size === 0) return `${ms / size}${unit}`;
  }
  return `${ms}ms`;
}

// ---- Addresses. ----

/** A parsed `host:port`. `host` is as written (IPv6 without brackets); port 0 means "pick one". */
export interface HostPort {
  readonly host: string;
  readonly port: number;
}

const HOSTNAME_PATTERN = /^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/;
const IPV4_PATTERN = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/;
const IPV6_PATTERN = /^[0-9A-Fa-f:.]{2,45}$/;

/** Parses "127.0.0.1:7000", "node2:7001", "[::1]:7000". Port 0 is allowed ("pick one"). */
export function parseHostPort(raw: unknown): Parsed<HostPort> {
  if (typeof raw !== "string") return refuse(`must be a "host:port" string, not ${kindOf(raw)}`);
  const text = raw.trim();
  const bracketed = /^\[([^\]]*)\]:(.*)$/.exec(text);
  const colon = text.lastIndexOf(":");
  const host = bracketed !== null ? bracketed[1]! : colon > 0 ? text.slice(0, colon) : "";
  const portText = bracketed !== null ? bracketed[2]! : colon > 0 ? text.slice(colon + 1) : "";
  if (host === "" || (bracketed === null && colon <= 0)) return refuse('is not an address: write "host:port", like "127.0.0.1:7000"');
  if (bracketed === null && host.includes(":")) return refuse('has an IPv6 host without brackets: write "[::1]:7000"');
  if (!/^\d{1,5}$/.test(portText) || Number(portText) > 65535) return refuse("has no valid port: the port must be 0 to 65535 (0 picks a free one)");
  const hostOk = bracketed !== null ? IPV6_PATTERN.test(host) && host.includes(":") : isIpv4(host) || (!IPV4_PATTERN.test(host) && HOSTNAME_PATTERN.test(host));
  if (!hostOk) return refuse(`has an invalid host "${host}": use an IP address or a DNS name`);
  return accept({ host: host.toLowerCase(), port: Number(portText) });
}

function isIpv4(host: string): boolean {
  const m = IPV4_PATTERN.exec(host);
  return m !== null && m.slice(1).every((octet) => Number(octet) <= 255);
}

export function formatHostPort(address: HostPort): string {
  return address.host.includes(":") ? `[${address.host}]:${address.port}` : `${address.host}:${address.port}`;
}

/** True for addresses only this machine can reach: 127.0.0.0/8, ::1 and "localhost". */
export function isLoopback(address: HostPort): boolean {
  const h = address.host;
  return h === "localhost" || h === "::1" || h === "0:0:0:0:0:0:0:1" || (isIpv4(h) && h.startsWith("127."));
}

// ---- "Did you mean". ----

/** The closest candidate to `name`, if it is close enough to be a likely typo. */
export function suggest(name: string, candidates: Iterable<string>): string | undefined {
  const lower = name.toLowerCase();
  let best: string | undefined;
  let bestDistance = Math.max(2, Math.floor(lower.length / 3)) + 1;
  for (const candidate of candidates) {
    const d = editDistance(lower, candidate.toLowerCase());
    if (d < bestDistance) {
      best = candidate;
      bestDistance = d;
    }
  }
  return best;
}

/** Levenshtein distance; inputs are bounded by the caller (names, at most a few hundred characters). */
function editDistance(a: string, b: string): number {
  if (a.length > 256 || b.length > 256) return Number.MAX_SAFE_INTEGER;
  let previous = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    const current = [i];
    for (let j = 1; j <= b.length; j++) {
      const substitution = previous[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1);
      current.push(Math.min(previous[j]! + 1, current[j - 1]! + 1, substitution));
    }
    previous = current;
  }
  return previous[b.length]!;
}

// ---- Printing raw input back to the user. ----

/** Describes the type of a TOML value for messages: "a string", "an integer", "a table", ... */
export function kindOf(raw: unknown): string {
  if (typeof raw === "string") return "a string";
  if (typeof raw === "number") return Number.isInteger(raw) ? "an integer" : "a number";
  if (typeof raw === "boolean") return "a boolean";
  if (Array.isArray(raw)) return "an array";
  if (raw instanceof Date || (typeof raw === "object" && raw !== null && "toISOString" in raw)) return "a date";
  if (typeof raw === "object" && raw !== null) return "a table";
  return typeof raw;
}

/** The value as the user wrote it, TOML-style and shortened: "100KB" quoted, 5 bare, tables as {...}. */
export function showRaw(raw: unknown): string {
  let text: string;
  if (typeof raw === "string") text = JSON.stringify(raw);
  else if (typeof raw === "number" || typeof raw === "boolean") text = String(raw);
  else if (Array.isArray(raw)) text = `[${raw.map(showRaw).join(", ")}]`;
  else if (kindOf(raw) === "a date") text = String(raw);
  else if (typeof raw === "object" && raw !== null) text = "{...}";
  else text = String(raw);
  return text.length > 80 ? `${text.slice(0, 77)}...` : text;
}
