/**
 * The kinds of value a setting can hold, each with its parser and its printer. A kind parses a
 * raw value from one source: text from an environment variable or a flag, a TOML value from the
 * config file, or the built-in default. Reasons complete "<key> = <value>: ...".
 */

import { KMS_PREVIOUS_KEY_IDS_MAX } from "../crypto/crypto-limits.js";
import { accessSync, constants as fsConstants, statSync } from "node:fs";
import { isAbsolute, resolve } from "node:path";
import { TENANT_ID_BYTES_MAX, TENANTS_MAX, SETTING_TEXT_BYTES_MAX, CLUSTER_NODES_MAX } from "../limits.js";
import {
  accept, formatDuration, formatHostPort, formatSize, kindOf, parseDuration, parseHostPort, parseSize, refuse, showRaw,
  suggest, type HostPort, type Parsed,
} from "./setting-values.js";

/** Where a value came from, strongest first: flag, environment, config file, built-in default. */
export type SettingOrigin =
  | { readonly kind: "flag"; readonly name: string }
  | { readonly kind: "env"; readonly name: string }
  | { readonly kind: "file"; readonly path: string }
  | { readonly kind: "default" };

export interface ParseContext {
  readonly origin: SettingOrigin;
  /** Relative paths from flags, environment and defaults resolve against this directory. */
  readonly cwd: string;
  /** The key's name as the user wrote it in this source, for messages about parts of the value. */
  readonly label: string;
}

/** A JSON value for the startup log line and `--validate`'s summary. */
export type Shown = string | number | boolean | null | readonly Shown[] | { readonly [key: string]: Shown };

export interface Kind<T> {
  /** What the kind accepts, for docs and messages: "a size from 1MB to 1GB". */
  readonly accepts: string;
  /** The reasons this kind gives name the part of the value they are about, so messages print them alone. */
  readonly reasonsNameThemselves?: boolean;
  parse(raw: unknown, context: ParseContext): Parsed<T>;
  show(value: T): Shown;
}

const fromText = (context: ParseContext): boolean => context.origin.kind === "env" || context.origin.kind === "flag";

export function sizeKind(min: number, max: number): Kind<number> {
  const accepts = `a size from ${formatSize(min)} to ${formatSize(max)}`;
  return {
    accepts,
    parse(raw) {
      const parsed = parseSize(raw);
      if (!parsed.ok) return parsed;
      return parsed.value >= min && parsed.value <= max ? parsed : refuse(`must be between ${formatSize(min)} and ${formatSize(max)}`);
    },
    show: formatSize,
  };
}

export function durationKind(min: number, max: number): Kind<number> {
  return {
    accepts: `a duration from ${formatDuration(min)} to ${formatDuration(max)}`,
    parse(raw) {
      const parsed = parseDuration(raw);
      if (!parsed.ok) return parsed;
      return parsed.value >= min && parsed.value <= max ? parsed : refuse(`must be between ${formatDuration(min)} and ${formatDuration(max)}`);
    },
    show: formatDuration,
  };
}

export function integerKind(min: number, max: number): Kind<number> {
  const range = `an integer from ${min} to ${max}`;
  return {
    accepts: range,
    parse(raw, context) {
      let n: number;
      if (typeof raw === "number") n = raw;
      else if (typeof raw === "string" && fromText(context) && /^\s*-?\d{1,16}\s*$/.test(raw)) n = Number(raw);
      else if (typeof raw === "string" && context.origin.kind === "file" && /^\s*-?\d+\s*$/.test(raw)) {
        return refuse(`must be an integer, not a string: write ${raw.trim()} without quotes`);
      } else return refuse(`must be ${range}, not ${typeof raw === "string" ? "text" : kindOf(raw)}`);
      return Number.isSafeInteger(n) && n >= min && n <= max ? accept(n) : refuse(`must be ${range}`);
    },
    show: (n) => n,
  };
}

const TRUE_WORDS = new Set(["true", "1", "yes", "on"]);
const FALSE_WORDS = new Set(["false", "0", "no", "off"]);

export const booleanKind: Kind<boolean> = {
  accepts: "true or false",
  parse(raw, context) {
    if (typeof raw === "boolean") return accept(raw);
    if (typeof raw === "string" && fromText(context)) {
      const word = raw.trim().toLowerCase();
      if (TRUE_WORDS.has(word)) return accept(true);
      if (FALSE_WORDS.has(word)) return accept(false);
    }
    return refuse(`must be true or false${context.origin.kind === "file" && typeof raw === "string" ? " (without quotes)" : ""}`);
  },
  show: (b) => b,
};

export function oneOfKind<T extends string>(values: readonly T[]): Kind<T> {
  const list = values.map((v) => `"${v}"`).join(", ");
  return {
    accepts: `one of ${list}`,
    parse(raw) {
      if (typeof raw === "string" && (values as readonly string[]).includes(raw.trim())) return accept(raw.trim() as T);
      const hint = typeof raw === "string" ? suggest(raw, values) : undefined;
      return refuse(`must be one of ${list}${hint === undefined ? "" : `: did you mean "${hint}"?`}`);
    },
    show: (v) => v,
  };
}

/** Free text (key ids, identities): 1 to SETTING_TEXT_BYTES_MAX bytes, no control characters. */
function checkText(raw: unknown): Parsed<string> {
  if (typeof raw !== "string") return refuse(`must be a string, not ${kindOf(raw)}`);
  if (raw.length === 0) return refuse("must not be empty");
  if (Buffer.byteLength(raw) > SETTING_TEXT_BYTES_MAX) return refuse(`is longer than ${SETTING_TEXT_BYTES_MAX} bytes`);
  // eslint-disable-next-line no-control-regex
  if (/[\u0000-\u001f\u007f]/.test(raw)) return refuse("contains control characters");
  return accept(raw);
}

export const textKind: Kind<string> = { accepts: "a non-empty string", parse: checkText, show: (s) => s };

export function patternKind(pattern: RegExp, rule: string): Kind<string> {
  return {
    accepts: rule,
    parse(raw) {
      if (typeof raw !== "string") return refuse(`must be a string, not ${kindOf(raw)}`);
      return pattern.test(raw) ? accept(raw) : refuse(`must be ${rule}`);
    },
    show: (s) => s,
  };
}

export const urlKind: Kind<string> = {
  accepts: "an http:// or https:// URL",
  parse(raw) {
    const text = checkText(raw);
    if (!text.ok) return text;
    let url: URL;
    try {
      url = new URL(text.value);
    } catch {
      return refuse('is not a URL: write it like "http://jaeger:14268/api/traces"');
    }
    return url.protocol === "http:" || url.protocol === "https:" ? accept(text.value) : refuse("must be an http:// or https:// URL");
  },
  show: (s) => s,
};

/**
 * A directory or file path. In the config file it must be absolute (the guide: "absolute path
 * required"), because a relative path there could mean the file's directory or the working one;
 * from a flag, the environment or a default it resolves against the working directory.
 */
export const directoryKind: Kind<string> = {
  accepts: "a path (absolute in the config file)",
  parse(raw, context) {
    const text = checkText(raw);
    if (!text.ok) return text;
    if (context.origin.kind === "file" && !isAbsolute(text.value)) {
      return refuse("must be an absolute path in the config file (a relative path is allowed only in a flag or environment variable)");
    }
    return accept(resolve(context.cwd, text.value));
  },
  show: (s) => s,
};

/** A file that must exist and be readable by this process now (TLS certificates and keys). */
export const readableFileKind: Kind<string> = {
  accepts: "the path of a readable file (absolute in the config file)",
  parse(raw, context) {
    const path = directoryKind.parse(raw, context);
    if (!path.ok) return path;
    try {
      if (!statSync(path.value).isFile()) return refuse("is not a regular file");
      accessSync(path.value, fsConstants.R_OK);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code ?? String(e);
      const hint = code === "ENOENT" ? "no such file" : code === "EACCES" ? "permission denied for the user running verity-server" : "cannot read it";
      return refuse(`cannot be read: ${code} (${hint})`);
    }
    return path;
  },
  show: (s) => s,
};

export const addressKind: Kind<HostPort> = {
  accepts: '"host:port" (port 0 picks a free port)',
  parse: (raw) => parseHostPort(raw),
  show: formatHostPort,
};

/** Items of a list: an array of strings in the file, comma-separated text in a flag or variable. */
function listItems(raw: unknown, context: ParseContext): Parsed<string[]> {
  if (Array.isArray(raw)) {
    const bad = raw.findIndex((item) => typeof item !== "string");
    return bad < 0 ? accept(raw as string[]) : refuse(`must list strings only; item ${bad} is ${kindOf(raw[bad])}`);
  }
  if (typeof raw !== "string") return refuse(`must be ${context.origin.kind === "file" ? "an array of strings" : "a comma-separated list"}, not ${kindOf(raw)}`);
  if (raw.trim() === "") return accept([]);
  return accept(raw.split(",").map((item) => item.trim()));
}

function firstDuplicate(items: readonly string[]): string | undefined {
  const seen = new Set<string>();
  for (const item of items) {
    if (seen.has(item)) return item;
    seen.add(item);
  }
  return undefined;
}

/** `cluster_peers`: the other nodes' cluster addresses, without duplicates. */
export const peersKind: Kind<HostPort[]> = {
  accepts: `a comma-separated list of host:port, at most ${CLUSTER_NODES_MAX - 1}`,
  parse(raw, context) {
    const items = listItems(raw, context);
    if (!items.ok) return items;
    if (items.value.length > CLUSTER_NODES_MAX - 1) return refuse(`lists ${items.value.length} peers; a cluster has at most ${CLUSTER_NODES_MAX} nodes`);
    const peers: HostPort[] = [];
    for (const item of items.value) {
      if (item === "") return refuse("has an empty entry: separate addresses with single commas");
      const peer = parseHostPort(item);
      if (!peer.ok) return refuse(`entry "${item}" ${peer.reason}`);
      if (peer.value.port === 0) return refuse(`entry "${item}" has port 0: a peer's port must be the one it listens on`);
      peers.push(peer.value);
    }
    const duplicate = firstDuplicate(peers.map(formatHostPort));
    return duplicate === undefined ? accept(peers) : refuse(`lists ${duplicate} more than once`);
  },
  show: (peers) => peers.map(formatHostPort),
};

/** `security.admins` and `security.nodes`: certificate identities, without duplicates. */
export const identitiesKind: Kind<string[]> = {
  accepts: "a list of certificate identities",
  parse(raw, context) {
    const items = listItems(raw, context);
    if (!items.ok) return items;
    for (const item of items.value) {
      const text = checkText(item);
      if (!text.ok) return refuse(`entry ${showRaw(item)} ${text.reason}`);
    }
    const duplicate = firstDuplicate(items.value);
    return duplicate === undefined ? items : refuse(`lists "${duplicate}" more than once`);
  },
  show: (items) => items,
};

/** KMS key ids (`encryption.kms_previous_key_ids`): non-empty strings, none twice, at most KMS_PREVIOUS_KEY_IDS_MAX. */
export const keyIdsKind: Kind<string[]> = {
  accepts: `a list of at most ${KMS_PREVIOUS_KEY_IDS_MAX} KMS key ids`,
  parse(raw, context) {
    const items = listItems(raw, context);
    if (!items.ok) return items;
    if (items.value.length > KMS_PREVIOUS_KEY_IDS_MAX) return refuse(`lists ${items.value.length} keys; at most ${KMS_PREVIOUS_KEY_IDS_MAX}`);
    for (const item of items.value) {
      const text = checkText(item);
      if (!text.ok) return refuse(`entry ${showRaw(item)} ${text.reason}`);
    }
    const duplicate = firstDuplicate(items.value);
    return duplicate === undefined ? items : refuse(`lists "${duplicate}" more than once`);
  },
  show: (items) => items,
};

/** A tenant client (issue 4 section 3): a certificate identity allowed to act on these tenants only. */
export interface ClientGrant {
  readonly identity: string;
  readonly tenants: readonly string[];
}

/** Tenant ids (docs/design/events.md): 1 to 64 characters from [A-Za-z0-9_.-], starting with a letter or digit. */
export const TENANT_ID_PATTERN = new RegExp(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,${TENANT_ID_BYTES_MAX - 1}}$`);

/** `[[security.clients]]`: an array of tables `{ identity, tenants }`, only from the config file. */
export const clientsKind: Kind<ClientGrant[]> = {
  accepts: "[[security.clients]] tables with identity and tenants",
  reasonsNameThemselves: true,
  parse(raw, context) {
    if (!Array.isArray(raw)) return refuse(`${context.label} = ${showRaw(raw)}: must be written as [[security.clients]] tables`);
    const grants: ClientGrant[] = [];
    for (const [i, entry] of raw.entries()) {
      const grant = parseGrant(entry, `${context.label}[${i}]`);
      if (!grant.ok) return grant;
      grants.push(grant.value);
    }
    return accept(grants);
  },
  show: (grants) => grants.map((g) => ({ identity: g.identity, tenants: [...g.tenants] })),
};

const GRANT_KEYS = ["identity", "tenants"];

function parseGrant(entry: unknown, label: string): Parsed<ClientGrant> {
  if (typeof entry !== "object" || entry === null || Array.isArray(entry) || kindOf(entry) !== "a table") {
    return refuse(`${label} must be a table with identity and tenants, not ${kindOf(entry)}`);
  }
  const fields = new Map(Object.entries(entry));
  for (const name of fields.keys()) {
    if (!GRANT_KEYS.includes(name)) {
      const hint = suggest(name, GRANT_KEYS);
      return refuse(`${label} has an unknown key "${name}"${hint === undefined ? "" : `: did you mean "${hint}"?`} (keys: identity, tenants)`);
    }
  }
  const identity = checkText(fields.get("identity"));
  if (!identity.ok) return refuse(`${label}.identity ${fields.has("identity") ? identity.reason : "is missing"}`);
  const tenants = fields.get("tenants");
  if (!Array.isArray(tenants) || tenants.length === 0) return refuse(`${label}.tenants must be a non-empty array of tenant ids`);
  if (tenants.length > TENANTS_MAX) return refuse(`${label}.tenants lists more than ${TENANTS_MAX} tenants`);
  for (const [j, tenant] of tenants.entries()) {
    if (typeof tenant !== "string" || !TENANT_ID_PATTERN.test(tenant)) {
      return refuse(`${label}.tenants[${j}] = ${showRaw(tenant)} is not a tenant id (1 to ${TENANT_ID_BYTES_MAX} characters from [A-Za-z0-9_.-], starting with a letter or digit)`);
    }
  }
  const duplicate = firstDuplicate(tenants as string[]);
  if (duplicate !== undefined) return refuse(`${label}.tenants lists "${duplicate}" more than once`);
  return accept({ identity: identity.value, tenants: tenants as string[] });
}

/** Makes a kind optional: unset (undefined) unless a source gives a value. */
export function optional<T>(kind: Kind<T>): Kind<T | undefined> {
  return {
    accepts: kind.accepts,
    parse: (raw, context) => (raw === undefined ? accept(undefined) : kind.parse(raw, context)),
    show: (value) => (value === undefined ? null : kind.show(value)),
  };
}
