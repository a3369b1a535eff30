/**
 * The settings of `verity-server` (docs/configuration.md). Sources, strongest first: command-line
 * flags, VERITY_* environment variables, the TOML config file (`--config`), built-in defaults
 * (the operations guide's values, from src/limits.ts; a bare start stays on loopback).
 *
 * `loadSettings` never throws for bad input: it returns every problem it finds, each naming the key
 * as the user wrote it (`storage.segment_size = "100KB": must be between 1MB and 1GB`), so an
 * operator fixes a config in one pass. Environment variable names: `VERITY_` + the key's dotted
 * path in upper case with dots as underscores (`VERITY_STORAGE_SEGMENT_SIZE`, `VERITY_LOG_LEVEL`);
 * the guide's short names VERITY_NODE_ID, VERITY_BIND_ADDRESS and VERITY_DATA_DIR work too.
 */

import { readFileSync, statSync } from "node:fs";
import { resolve } from "node:path";
import { parse as parseToml } from "smol-toml";
import { invariant } from "../errors.js";
import {
  BATCH_BYTES_MAX, BATCH_BYTES_MAX_DEFAULT, BIND_ADDRESS_DEFAULT, CHECKPOINT_INTERVAL_ENTRIES_DEFAULT,
  CHECKPOINT_INTERVAL_ENTRIES_MAX, CHECKPOINT_INTERVAL_ENTRIES_MIN, CLUSTER_ADDRESS_DEFAULT, CLUSTER_NAME_BYTES_MAX,
  CLUSTER_NAME_DEFAULT, CONFIG_FILE_BYTES_MAX, DATA_DIR_DEFAULT, ELECTION_TIMEOUT_MS_HIGHEST, ELECTION_TIMEOUT_MS_LOWEST,
  ELECTION_TIMEOUT_MS_MAX_DEFAULT, ELECTION_TIMEOUT_MS_MIN_DEFAULT, ENTRIES_PER_RPC_MAX, ENTRIES_PER_RPC_MAX_DEFAULT,
  HEARTBEAT_INTERVAL_MS_DEFAULT, HEARTBEAT_INTERVAL_MS_MAX, HEARTBEAT_INTERVAL_MS_MIN, METRICS_ADDRESS_DEFAULT,
  NODE_ID_MAX, PROJECTION_CACHE_BYTES_DEFAULT, PROJECTION_CACHE_BYTES_MAX, PROJECTION_CACHE_BYTES_MIN, RECORD_BYTES_MAX,
  RECORD_BYTES_MAX_DEFAULT, SECURITY_IDENTITIES_MAX, SEGMENT_BYTES_DEFAULT, SEGMENT_BYTES_MAX, SEGMENT_BYTES_MIN,
  STREAMS_PER_TENANT_MAX, STREAMS_PER_TENANT_MAX_DEFAULT, TENANTS_MAX, TENANTS_MAX_DEFAULT,
} from "../limits.js";
import type { SyncMode } from "../log/segmented-log.js";
import { LOG_LEVELS, type LogLevel } from "../logger.js";
import {
  addressKind, booleanKind, clientsKind, directoryKind, durationKind, identitiesKind, integerKind, oneOfKind, optional,
  keyIdsKind, patternKind, peersKind, readableFileKind, sizeKind, textKind, urlKind, type ClientGrant, type Kind, type ParseContext,
  type SettingOrigin, type Shown,
} from "./setting-kinds.js";
import { formatHostPort, isLoopback, kindOf, showRaw, suggest, type HostPort } from "./setting-values.js";

export type { ClientGrant, SettingOrigin, Shown } from "./setting-kinds.js";
export type { HostPort } from "./setting-values.js";

export const KMS_PROVIDERS = ["local", "aws-kms", "gcp-kms", "azure-keyvault"] as const;
export type KmsProvider = (typeof KMS_PROVIDERS)[number];
export const SYNC_MODES: readonly SyncMode[] = ["fsync", "async"];

// ---- The keys. ----

/** One setting: its dotted path in the TOML file, how it parses, and which sources may set it. */
export interface SettingSpec<T> {
  /** "storage.segment_size"; keys outside any section ("log_level") have no dot. */
  readonly path: string;
  readonly kind: Kind<T>;
  /** Parsed like any other source (so "./data" resolves against the working directory); undefined = unset. */
  readonly defaultRaw: unknown;
  /** Environment variables that set it, the canonical name first; empty when it has none. */
  readonly env: readonly string[];
  /** The flag, without dashes ("data-dir"), or undefined. */
  readonly flag: string | undefined;
  /** Whether the config file may set it. */
  readonly inFile: boolean;
}

/** `VERITY_` + the dotted path in upper case, dots as underscores. */
export function envNameOf(path: string): string {
  return `VERITY_${path.replace(/\./g, "_").toUpperCase()}`;
}

function setting<T>(
  path: string,
  kind: Kind<T>,
  defaultRaw: unknown,
  options: { flag?: string; envAlias?: string; inFile?: boolean; inEnv?: boolean } = {},
): SettingSpec<T> {
  const env = options.inEnv === false ? [] : [envNameOf(path), ...(options.envAlias === undefined ? [] : [options.envAlias])];
  return { path, kind, defaultRaw, env, flag: options.flag, inFile: options.inFile ?? true };
}

const ms = (n: number): string => `${n}ms`;
/** `limits.max_query_duration`: default 30 s, from 10 ms to 1 hour. */
const QUERY_MS_DEFAULT = 30_000;
const QUERY_MS_LOWEST = 10;
const QUERY_MS_HIGHEST = 3_600_000;
/** `limits.max_query_rows`: default 10,000, at most 1,000,000. */
const QUERY_ROWS_DEFAULT = 10_000;
const QUERY_ROWS_HIGHEST = 1_000_000;

/** Every setting. The order is the order of docs/configuration.md and of the problems reported. */
export const SETTINGS = {
  bindAddress: setting("server.bind_address", addressKind, BIND_ADDRESS_DEFAULT, { flag: "bind", envAlias: "VERITY_BIND_ADDRESS" }),
  clusterAddress: setting("server.cluster_address", addressKind, CLUSTER_ADDRESS_DEFAULT, { flag: "cluster-address" }),
  nodeId: setting("server.node_id", optional(integerKind(1, NODE_ID_MAX)), undefined, { flag: "node-id", envAlias: "VERITY_NODE_ID" }),
  clusterName: setting(
    "server.cluster_name",
    patternKind(new RegExp(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,${CLUSTER_NAME_BYTES_MAX - 1}}$`), `1 to ${CLUSTER_NAME_BYTES_MAX} characters from [A-Za-z0-9_.-], starting with a letter or digit`),
    CLUSTER_NAME_DEFAULT,
  ),
  dataDir: setting("storage.data_dir", directoryKind, DATA_DIR_DEFAULT, { flag: "data-dir", envAlias: "VERITY_DATA_DIR" }),
  segmentBytes: setting("storage.segment_size", sizeKind(SEGMENT_BYTES_MIN, SEGMENT_BYTES_MAX), SEGMENT_BYTES_DEFAULT),
  syncMode: setting("storage.sync_mode", oneOfKind(SYNC_MODES), "fsync"),
  heartbeatIntervalMs: setting("consensus.heartbeat_interval", durationKind(HEARTBEAT_INTERVAL_MS_MIN, HEARTBEAT_INTERVAL_MS_MAX), ms(HEARTBEAT_INTERVAL_MS_DEFAULT)),
  electionTimeoutMsMin: setting("consensus.election_timeout_min", durationKind(ELECTION_TIMEOUT_MS_LOWEST, ELECTION_TIMEOUT_MS_HIGHEST), ms(ELECTION_TIMEOUT_MS_MIN_DEFAULT)),
  electionTimeoutMsMax: setting("consensus.election_timeout_max", durationKind(ELECTION_TIMEOUT_MS_LOWEST, ELECTION_TIMEOUT_MS_HIGHEST), ms(ELECTION_TIMEOUT_MS_MAX_DEFAULT)),
  entriesPerRpcMax: setting("consensus.max_entries_per_rpc", integerKind(1, ENTRIES_PER_RPC_MAX), ENTRIES_PER_RPC_MAX_DEFAULT),
  projectionCacheBytes: setting("projections.cache_size", sizeKind(PROJECTION_CACHE_BYTES_MIN, PROJECTION_CACHE_BYTES_MAX), PROJECTION_CACHE_BYTES_DEFAULT),
  checkpointIntervalEntries: setting("projections.checkpoint_interval", integerKind(CHECKPOINT_INTERVAL_ENTRIES_MIN, CHECKPOINT_INTERVAL_ENTRIES_MAX), CHECKPOINT_INTERVAL_ENTRIES_DEFAULT),
  tlsCert: setting("security.tls_cert", optional(readableFileKind), undefined),
  tlsKey: setting("security.tls_key", optional(readableFileKind), undefined),
  tlsCa: setting("security.tls_ca", optional(readableFileKind), undefined),
  requireClientCert: setting("security.require_client_cert", booleanKind, true),
  admins: setting("security.admins", identitiesKind, []),
  nodes: setting("security.nodes", identitiesKind, []),
  clients: setting("security.clients", clientsKind, [], { inEnv: false }),
  encryptionEnabled: setting("encryption.enabled", booleanKind, false),
  kmsProvider: setting("encryption.kms_provider", oneOfKind(KMS_PROVIDERS), "local"),
  kmsKeyId: setting("encryption.kms_key_id", optional(textKind), undefined),
  kmsEndpoint: setting("encryption.kms_endpoint", optional(urlKind), undefined),
  kmsRegion: setting("encryption.region", optional(textKind), undefined),
  kmsPreviousKeyIds: setting("encryption.kms_previous_key_ids", keyIdsKind, []),
  tenantsMax: setting("limits.max_tenants", integerKind(1, TENANTS_MAX), TENANTS_MAX_DEFAULT),
  streamsPerTenantMax: setting("limits.max_streams_per_tenant", integerKind(1, STREAMS_PER_TENANT_MAX), STREAMS_PER_TENANT_MAX_DEFAULT),
  recordBytesMax: setting("limits.max_record_size", sizeKind(1, RECORD_BYTES_MAX), RECORD_BYTES_MAX_DEFAULT),
  batchBytesMax: setting("limits.max_batch_size", sizeKind(1, BATCH_BYTES_MAX), BATCH_BYTES_MAX_DEFAULT),
  queryMsMax: setting("limits.max_query_duration", durationKind(QUERY_MS_LOWEST, QUERY_MS_HIGHEST), ms(QUERY_MS_DEFAULT)),
  queryRowsMax: setting("limits.max_query_rows", integerKind(1, QUERY_ROWS_HIGHEST), QUERY_ROWS_DEFAULT),
  metricsAddress: setting("telemetry.metrics_address", addressKind, METRICS_ADDRESS_DEFAULT, { flag: "metrics-address" }),
  tracingEnabled: setting("telemetry.tracing_enabled", booleanKind, false),
  tracingEndpoint: setting("telemetry.tracing_endpoint", optional(urlKind), undefined),
  logLevel: setting("log_level", oneOfKind(LOG_LEVELS), "info", { flag: "log-level" }),
  clusterPeers: setting("cluster_peers", peersKind, "", { flag: "cluster-peers" }),
  insecure: setting("insecure", booleanKind, false, { flag: "insecure" }),
  // Only read when the data directory is new: join the cluster of cluster_peers instead of forming one.
  join: setting("join", booleanKind, false, { flag: "join" }),
  // A one-time recovery step: kept out of the file and the environment so it cannot repeat on every restart.
  forceRecover: setting("force_recover", booleanKind, false, { flag: "force-recover", inFile: false, inEnv: false }),
} as const;

type SettingName = keyof typeof SETTINGS;
type ValueOf<S> = S extends SettingSpec<infer T> ? T : never;
type Values = { -readonly [K in SettingName]: ValueOf<(typeof SETTINGS)[K]> };

const NAMES = Object.keys(SETTINGS) as SettingName[];
const SECTIONS: ReadonlySet<string> = new Set(NAMES.map((n) => SETTINGS[n].path).filter((p) => p.includes(".")).map((p) => p.split(".")[0]!));
const BY_PATH: ReadonlyMap<string, SettingName> = new Map(NAMES.map((n) => [SETTINGS[n].path, n]));
const BY_ENV: ReadonlyMap<string, SettingName> = new Map(NAMES.flatMap((n) => SETTINGS[n].env.map((e) => [e, n] as const)));
/** Every flag that sets a key, without dashes. */
export const SETTING_FLAGS: readonly string[] = NAMES.flatMap((n) => (SETTINGS[n].flag === undefined ? [] : [SETTINGS[n].flag!]));

// ---- The result. ----

/** The settings one node runs with. Every value is checked; paths are absolute. */
export interface Settings {
  readonly server: {
    /** Client gRPC and HTTP health/status. */
    readonly bindAddress: HostPort;
    /** Peer (Raft) traffic. */
    readonly clusterAddress: HostPort;
    /** Undefined: the id stored in the data directory, or 1 for a new one. */
    readonly nodeId: number | undefined;
    readonly clusterName: string;
  };
  readonly storage: { readonly dataDir: string; readonly segmentBytes: number; readonly syncMode: SyncMode };
  readonly consensus: {
    readonly heartbeatIntervalMs: number;
    /** Invariant: heartbeatIntervalMs < electionTimeoutMsMin < electionTimeoutMsMax. */
    readonly electionTimeoutMsMin: number;
    readonly electionTimeoutMsMax: number;
    readonly entriesPerRpcMax: number;
  };
  readonly projections: { readonly cacheBytes: number; readonly checkpointIntervalEntries: number };
  readonly security: {
    /** Invariant: tlsCert and tlsKey are both set or both unset; each is a file that was readable at load. */
    readonly tlsCert: string | undefined;
    readonly tlsKey: string | undefined;
    readonly tlsCa: string | undefined;
    /** When TLS is on and this is true, tlsCa is set. */
    readonly requireClientCert: boolean;
    /** Certificate identities with the admin role, the node role, and tenant clients; no identity twice. */
    readonly admins: readonly string[];
    readonly nodes: readonly string[];
    readonly clients: readonly ClientGrant[];
  };
  readonly encryption: {
    readonly enabled: boolean;
    readonly kmsProvider: KmsProvider;
    /** Invariant: set when enabled. For "local", the master key file's path. */
    readonly kmsKeyId: string | undefined;
    /** aws-kms: the endpoint override (VPC endpoints, tests) and the region (required for aws-kms when enabled). */
    readonly kmsEndpoint: string | undefined;
    readonly region: string | undefined;
    /** Earlier keys still accepted for unwrapping while data keys are re-wrapped to kmsKeyId (aws-kms). */
    readonly kmsPreviousKeyIds: readonly string[];
  };
  readonly limits: {
    readonly tenantsMax: number;
    readonly streamsPerTenantMax: number;
    /** Invariant: recordBytesMax <= batchBytesMax. */
    readonly recordBytesMax: number;
    readonly batchBytesMax: number;
    /** A query running longer is stopped (DEADLINE_EXCEEDED). */
    readonly queryMsMax: number;
    /** Rows one query answers at most. */
    readonly queryRowsMax: number;
  };
  readonly telemetry: { readonly metricsAddress: HostPort; readonly tracingEnabled: boolean; readonly tracingEndpoint: string | undefined };
  readonly logLevel: LogLevel;
  /** The other voters' cluster addresses; never this node's own cluster address. Empty: a single node. */
  readonly clusterPeers: readonly HostPort[];
  /** Accept plaintext on a non-loopback address. */
  readonly insecure: boolean;
  /** A new data directory joins the existing cluster of `clusterPeers` (as a non-member, until an admin adds it). */
  readonly join: boolean;
  readonly forceRecover: boolean;
  /** The config file read (absolute), if any. */
  readonly configPath: string | undefined;
  /** Where each key's value came from, by dotted path. */
  readonly origins: Readonly<Record<string, SettingOrigin>>;
  /** Every key's value as printed in the startup log and `--validate` (sizes "64MB", durations "150ms"), by dotted path. */
  readonly shown: Readonly<Record<string, Shown>>;
}

export interface SettingsInputs {
  /** Flag values by name without dashes ("data-dir"): strings as typed, booleans for switches; undefined = not given. */
  readonly flags?: Readonly<Record<string, unknown>>;
  /** The environment (only VERITY_* variables are read; an empty value counts as unset). */
  readonly env?: Readonly<Record<string, string | undefined>>;
  /** `--config`. `text`, when given, is used instead of reading `path` (tests). */
  readonly configFile?: { readonly path: string; readonly text?: string };
  /** Relative paths resolve against this directory. Defaults to process.cwd(). */
  readonly cwd?: string;
}

export type SettingsResult =
  | { readonly ok: true; readonly settings: Settings; readonly warnings: readonly string[] }
  | { readonly ok: false; readonly problems: readonly string[]; readonly warnings: readonly string[] };

/** Reads every source, checks every key and the rules between keys, and returns the settings or every problem. */
export function loadSettings(inputs: SettingsInputs = {}): SettingsResult {
  const cwd = inputs.cwd ?? process.cwd();
  const problems: string[] = [];
  const warnings: string[] = [];
  const configPath = inputs.configFile === undefined ? undefined : resolve(cwd, inputs.configFile.path);
  const fileValues = configPath === undefined ? new Map<string, unknown>() : readConfigFile(configPath, inputs.configFile?.text, problems);
  const envValues = readEnvironment(inputs.env ?? {}, problems, warnings);
  const values: Partial<Values> = {};
  const origins: Record<string, SettingOrigin> = {};
  const failed = new Set<SettingName>();
  for (const name of NAMES) {
    const chosen = resolveSetting(name, { flags: inputs.flags ?? {}, envValues, fileValues, configPath: configPath ?? "", cwd }, problems);
    if (chosen === undefined) {
      failed.add(name);
      continue;
    }
    (values as Record<string, unknown>)[name] = chosen.value;
    origins[SETTINGS[name].path] = chosen.origin;
  }
  problems.push(...crossCheck(values, origins, failed));
  if (problems.length > 0) return { ok: false, problems, warnings };
  return { ok: true, settings: build(values as Values, origins, configPath), warnings };
}

// ---- Sources. ----

interface Sources {
  readonly flags: Readonly<Record<string, unknown>>;
  readonly envValues: ReadonlyMap<string, string>;
  readonly fileValues: ReadonlyMap<string, unknown>;
  readonly configPath: string;
  readonly cwd: string;
}

interface Candidate {
  readonly origin: SettingOrigin;
  readonly raw: unknown;
}

/** Every value given for one key, strongest first, ending with the default. */
function candidatesOf(name: SettingName, sources: Sources, problems: string[]): Candidate[] {
  const spec = SETTINGS[name];
  const out: Candidate[] = [];
  const flagValue = spec.flag === undefined ? undefined : sources.flags[spec.flag];
  if (Array.isArray(flagValue)) problems.push(`--${spec.flag} was given more than once (${flagValue.map(showRaw).join(", ")}): give it once`);
  else if (flagValue !== undefined) out.push({ origin: { kind: "flag", name: `--${spec.flag}` }, raw: flagValue });
  const fromEnv = spec.env.filter((e) => sources.envValues.has(e)).map((e) => ({ origin: { kind: "env", name: e } as const, raw: sources.envValues.get(e) }));
  const [firstEnv, ...otherEnv] = fromEnv;
  for (const other of otherEnv) {
    if (other.raw !== firstEnv!.raw) {
      problems.push(`${firstEnv!.origin.name}=${showRaw(firstEnv!.raw)} and ${other.origin.name}=${showRaw(other.raw)} both set ${spec.path} and disagree: set only one of them`);
    }
  }
  if (firstEnv !== undefined) out.push(firstEnv);
  if (sources.fileValues.has(spec.path)) out.push({ origin: { kind: "file", path: sources.configPath }, raw: sources.fileValues.get(spec.path) });
  out.push({ origin: { kind: "default" }, raw: spec.defaultRaw });
  return out;
}

/** Checks every value given for the key (a bad value is a problem even when a stronger source overrides it). */
function resolveSetting(name: SettingName, sources: Sources, problems: string[]): { value: unknown; origin: SettingOrigin } | undefined {
  const spec = SETTINGS[name] as SettingSpec<unknown>;
  let chosen: { value: unknown; origin: SettingOrigin } | undefined;
  let decided = false;
  for (const candidate of candidatesOf(name, sources, problems)) {
    const label = candidate.origin.kind === "flag" ? candidate.origin.name : spec.path;
    const context: ParseContext = { origin: candidate.origin, cwd: sources.cwd, label };
    const parsed = spec.kind.parse(candidate.raw, context);
    if (candidate.origin.kind === "default") {
      invariant(parsed.ok, `the default of ${spec.path} does not parse: ${parsed.ok ? "" : parsed.reason}`);
    } else if (!parsed.ok) {
      problems.push(spec.kind.reasonsNameThemselves === true ? parsed.reason : `${where(spec, candidate)}: ${parsed.reason}`);
    }
    if (!decided) {
      decided = true;
      chosen = parsed.ok ? { value: parsed.value, origin: candidate.origin } : undefined;
    }
  }
  return chosen;
}

/** The key and value as the user wrote them: `storage.segment_size = "100KB"`, `VERITY_X="y" (server.x)`, `--bind "y"`. */
function where(spec: SettingSpec<unknown>, candidate: Candidate): string {
  switch (candidate.origin.kind) {
    case "file":
    case "default":
      return `${spec.path} = ${showRaw(candidate.raw)}`;
    case "env":
      return `${candidate.origin.name}=${showRaw(candidate.raw)} (${spec.path})`;
    case "flag":
      return `${candidate.origin.name} ${showRaw(candidate.raw)} (${spec.path})`;
  }
}

function readEnvironment(env: Readonly<Record<string, string | undefined>>, problems: string[], warnings: string[]): Map<string, string> {
  const out = new Map<string, string>();
  for (const name of Object.keys(env).sort()) {
    const value = env[name];
    if (!name.startsWith("VERITY_") || value === undefined || value === "") continue;
    if (BY_ENV.has(name)) {
      out.set(name, value);
      continue;
    }
    if (name === envNameOf(SETTINGS.forceRecover.path)) {
      problems.push(`${name} is not read: force_recover is a one-time step, given only as --force-recover on the command line`);
      continue;
    }
    const hint = suggest(name, BY_ENV.keys());
    const meantForUs = [...SECTIONS].some((s) => name.startsWith(`VERITY_${s.toUpperCase()}_`));
    const hintText = hint === undefined ? "" : `: did you mean ${hint}?`;
    // A variable named after a section can only be meant for this server; others may belong to another tool.
    if (meantForUs) problems.push(`unknown environment variable ${name}${hintText}`);
    else warnings.push(`ignoring environment variable ${name}, which is not a verity-server setting${hintText}`);
  }
  return out;
}

/** Reads and parses the config file; returns the raw value of every known key, by dotted path. */
function readConfigFile(path: string, text: string | undefined, problems: string[]): Map<string, unknown> {
  let source = text;
  if (source === undefined) {
    try {
      const size = statSync(path).size;
      if (size > CONFIG_FILE_BYTES_MAX) {
        problems.push(`--config ${path}: the file is ${size} bytes; a config file is at most ${CONFIG_FILE_BYTES_MAX} bytes`);
        return new Map();
      }
      source = readFileSync(path, "utf8");
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code ?? String(e);
      problems.push(`--config ${path}: cannot read the file: ${code}${code === "ENOENT" ? " (no such file)" : ""}`);
      return new Map();
    }
  }
  let table: Record<string, unknown>;
  try {
    table = parseToml(source, { maxDepth: 32 });
  } catch (e) {
    const error = e as { message?: string; line?: number; column?: number };
    const first = String(error.message ?? e).split("\n")[0]!.replace(/^Invalid TOML document: /, "");
    const at = typeof error.line === "number" ? ` at line ${error.line}, column ${error.column}` : "";
    problems.push(`--config ${path}: not valid TOML${at}: ${first}`);
    return new Map();
  }
  return collectFileKeys(table, problems);
}

function isTable(value: unknown): value is Record<string, unknown> {
  return kindOf(value) === "a table";
}

function collectFileKeys(table: Record<string, unknown>, problems: string[]): Map<string, unknown> {
  const out = new Map<string, unknown>();
  for (const [name, value] of Object.entries(table)) {
    if (!SECTIONS.has(name)) {
      visitFileKey(name, value, out, problems);
    } else if (!isTable(value)) {
      problems.push(`${name} = ${showRaw(value)}: must be the section [${name}], not ${kindOf(value)}`);
    } else {
      for (const [key, inner] of Object.entries(value)) visitFileKey(`${name}.${key}`, inner, out, problems);
    }
  }
  return out;
}

function visitFileKey(path: string, value: unknown, out: Map<string, unknown>, problems: string[]): void {
  const name = BY_PATH.get(path);
  if (name !== undefined && SETTINGS[name].inFile) {
    out.set(path, value);
  } else if (name !== undefined) {
    problems.push(`${path} cannot be set in the config file: it is a one-time step, given only as --${SETTINGS[name].flag} on the command line`);
  } else if (!path.includes(".") && isTable(value)) {
    const hint = suggest(path, SECTIONS);
    problems.push(`unknown section [${path}]${hint === undefined ? "" : `: did you mean [${hint}]?`} (sections: ${[...SECTIONS].map((s) => `[${s}]`).join(", ")})`);
  } else {
    problems.push(`unknown key ${path}${didYouMean(path)}`);
  }
}

/** The likely intended key: a close spelling, or the same name in the right section. */
function didYouMean(path: string): string {
  const fileKeys = NAMES.filter((n) => SETTINGS[n].inFile).map((n) => SETTINGS[n].path);
  const leaf = path.split(".").pop()!;
  const moved = fileKeys.find((k) => k.split(".").pop() === leaf);
  if (moved !== undefined) return `: did you mean ${moved}?${moved.includes(".") ? ` (it belongs in [${moved.split(".")[0]}])` : " (it belongs at the top, before any section)"}`;
  const hint = suggest(path, fileKeys);
  return hint === undefined ? " (see docs/configuration.md for every key)" : `: did you mean ${hint}?`;
}

// ---- Rules between keys. ----

function describeOrigin(origin: SettingOrigin): string {
  switch (origin.kind) {
    case "flag":
      return `from ${origin.name}`;
    case "env":
      return `from ${origin.name}`;
    case "file":
      return "from the config file";
    case "default":
      return "the default";
  }
}

function crossCheck(values: Partial<Values>, origins: Record<string, SettingOrigin>, failed: ReadonlySet<SettingName>): string[] {
  const problems: string[] = [];
  const show = (name: SettingName): string => {
    const spec = SETTINGS[name] as SettingSpec<unknown>;
    if (failed.has(name)) return `${spec.path} (given, but invalid as reported)`;
    const shown = spec.kind.show(values[name]);
    return `${spec.path} = ${typeof shown === "string" ? shown : JSON.stringify(shown)} (${describeOrigin(origins[spec.path]!)})`;
  };
  const v = values;
  if (v.electionTimeoutMsMin !== undefined && v.electionTimeoutMsMax !== undefined && v.electionTimeoutMsMin >= v.electionTimeoutMsMax) {
    problems.push(`${show("electionTimeoutMsMin")} must be less than ${show("electionTimeoutMsMax")}: the election timeout is drawn from between them`);
  }
  if (v.heartbeatIntervalMs !== undefined && v.electionTimeoutMsMin !== undefined && v.heartbeatIntervalMs >= v.electionTimeoutMsMin) {
    problems.push(`${show("heartbeatIntervalMs")} must be less than ${show("electionTimeoutMsMin")}, or followers start elections against a healthy leader`);
  }
  if (v.recordBytesMax !== undefined && v.batchBytesMax !== undefined && v.recordBytesMax > v.batchBytesMax) {
    problems.push(`${show("recordBytesMax")} must not be larger than ${show("batchBytesMax")}: a record must fit in a batch`);
  }
  problems.push(...checkTls(v, origins, failed, show), ...checkAddresses(v, failed, show), ...checkIdentities(v));
  if (v.encryptionEnabled === true && v.kmsKeyId === undefined && !failed.has("kmsKeyId")) {
    problems.push(`${show("encryptionEnabled")} needs encryption.kms_key_id: the key (or key file, for "local") that wraps the data keys`);
  }
  if (v.encryptionEnabled === true && v.kmsProvider === "aws-kms" && v.kmsRegion === undefined && !failed.has("kmsRegion") &&
      regionOfKeyArn(v.kmsKeyId) === undefined) {
    problems.push(`${show("encryptionEnabled")} with kms_provider = "aws-kms" needs encryption.region (e.g. "eu-west-1"), or a key ARN in kms_key_id`);
  }
  if (v.tracingEnabled === true && v.tracingEndpoint === undefined && !failed.has("tracingEndpoint")) {
    problems.push(`${show("tracingEnabled")} needs telemetry.tracing_endpoint: the collector URL spans are sent to`);
  }
  return problems;
}

type Show = (name: SettingName) => string;

function checkTls(v: Partial<Values>, origins: Record<string, SettingOrigin>, failed: ReadonlySet<SettingName>, show: Show): string[] {
  const problems: string[] = [];
  const certGiven = v.tlsCert !== undefined || failed.has("tlsCert");
  const keyGiven = v.tlsKey !== undefined || failed.has("tlsKey");
  if (certGiven !== keyGiven) {
    problems.push(certGiven
      ? `${show("tlsCert")} needs security.tls_key: give the certificate and its private key together`
      : `${show("tlsKey")} needs security.tls_cert: give the certificate and its private key together`);
  }
  const caGiven = v.tlsCa !== undefined || failed.has("tlsCa");
  // require_client_cert defaults to true, so without a CA it is a problem once TLS is on, or when set on purpose.
  const onPurpose = origins[SETTINGS.requireClientCert.path]?.kind !== "default";
  if (v.requireClientCert === true && !caGiven && ((certGiven && keyGiven) || onPurpose)) {
    problems.push(`${show("requireClientCert")} needs security.tls_ca: the CA that client certificates must be signed by (or set require_client_cert = false)`);
  }
  return problems;
}

function checkAddresses(v: Partial<Values>, failed: ReadonlySet<SettingName>, show: Show): string[] {
  const problems: string[] = [];
  const addresses = (["bindAddress", "clusterAddress", "metricsAddress"] as const).filter((n) => v[n] !== undefined);
  const tlsKnown = !failed.has("tlsCert") && !failed.has("tlsKey") && !failed.has("insecure");
  const tlsOn = v.tlsCert !== undefined && v.tlsKey !== undefined;
  for (const name of addresses) {
    if (tlsKnown && !tlsOn && v.insecure === false && !isLoopback(v[name]!)) {
      problems.push(
        `${show(name)} is not a loopback address and TLS is off: refusing plaintext traffic off this machine. ` +
          "Set security.tls_cert and security.tls_key, bind to 127.0.0.1, or pass --insecure to accept plaintext",
      );
    }
  }
  for (const [i, a] of addresses.entries()) {
    for (const b of addresses.slice(i + 1)) {
      const x = v[a]!;
      const y = v[b]!;
      const wildcard = (h: string): boolean => h === "0.0.0.0" || h === "::";
      if (x.port !== 0 && x.port === y.port && (x.host === y.host || wildcard(x.host) || wildcard(y.host))) {
        problems.push(`${show(a)} and ${show(b)} use the same port: each service needs its own`);
      }
    }
  }
  if (v.clusterPeers !== undefined && v.clusterAddress !== undefined) {
    const own = formatHostPort(v.clusterAddress);
    if (v.clusterPeers.some((p) => formatHostPort(p) === own)) {
      problems.push(`${show("clusterPeers")} lists this node's own ${show("clusterAddress")}: list only the other nodes`);
    }
  }
  if (v.join === true && (v.clusterPeers?.length ?? 0) === 0) {
    problems.push(`join = true needs ${show("clusterPeers")}: list at least one member of the cluster to join`);
  }
  // With TLS the cluster port admits only the node role; a cluster with no node identities could never form.
  if (v.tlsCert !== undefined && (v.clusterPeers?.length ?? 0) > 0 && (v.nodes?.length ?? 0) === 0) {
    problems.push(
      `security.nodes is empty, but TLS is on and ${show("clusterPeers")} lists peers: list the certificate identities (subject CN) ` +
        "of the cluster's nodes, e.g. nodes = [\"node-1\", \"node-2\", \"node-3\"]; only they may use the cluster port",
    );
  }
  return problems;
}

function checkIdentities(v: Partial<Values>): string[] {
  const roles = new Map<string, string>();
  const problems: string[] = [];
  const add = (identity: string, role: string): void => {
    const earlier = roles.get(identity);
    if (earlier !== undefined) problems.push(`security: identity "${identity}" is listed as ${earlier} and as ${role}: a certificate identity has one role`);
    else roles.set(identity, role);
  };
  for (const identity of v.admins ?? []) add(identity, "an admin (security.admins)");
  for (const identity of v.nodes ?? []) add(identity, "a node (security.nodes)");
  for (const grant of v.clients ?? []) add(grant.identity, "a tenant client ([[security.clients]])");
  if (roles.size > SECURITY_IDENTITIES_MAX) problems.push(`security: ${roles.size} identities are listed; at most ${SECURITY_IDENTITIES_MAX} are accepted`);
  return problems;
}

// ---- Building the typed result. ----

function build(v: Values, origins: Record<string, SettingOrigin>, configPath: string | undefined): Settings {
  const shown: Record<string, Shown> = {};
  for (const name of NAMES) {
    const spec = SETTINGS[name] as SettingSpec<unknown>;
    shown[spec.path] = spec.kind.show(v[name]);
  }
  return {
    server: { bindAddress: v.bindAddress, clusterAddress: v.clusterAddress, nodeId: v.nodeId, clusterName: v.clusterName },
    storage: { dataDir: v.dataDir, segmentBytes: v.segmentBytes, syncMode: v.syncMode },
    consensus: {
      heartbeatIntervalMs: v.heartbeatIntervalMs, electionTimeoutMsMin: v.electionTimeoutMsMin,
      electionTimeoutMsMax: v.electionTimeoutMsMax, entriesPerRpcMax: v.entriesPerRpcMax,
    },
    projections: { cacheBytes: v.projectionCacheBytes, checkpointIntervalEntries: v.checkpointIntervalEntries },
    security: {
      tlsCert: v.tlsCert, tlsKey: v.tlsKey, tlsCa: v.tlsCa, requireClientCert: v.requireClientCert,
      admins: v.admins, nodes: v.nodes, clients: v.clients,
    },
    encryption: {
      enabled: v.encryptionEnabled, kmsProvider: v.kmsProvider, kmsKeyId: v.kmsKeyId,
      kmsEndpoint: v.kmsEndpoint, region: v.kmsRegion, kmsPreviousKeyIds: v.kmsPreviousKeyIds,
    },
    limits: { tenantsMax: v.tenantsMax, streamsPerTenantMax: v.streamsPerTenantMax, recordBytesMax: v.recordBytesMax, batchBytesMax: v.batchBytesMax, queryMsMax: v.queryMsMax, queryRowsMax: v.queryRowsMax },
    telemetry: { metricsAddress: v.metricsAddress, tracingEnabled: v.tracingEnabled, tracingEndpoint: v.tracingEndpoint },
    logLevel: v.logLevel,
    clusterPeers: v.clusterPeers,
    insecure: v.insecure,
    join: v.join,
    forceRecover: v.forceRecover,
    configPath,
    origins,
    shown,
  };
}

/** The region in an AWS KMS key ARN (arn:aws:kms:<region>:<account>:key/...), or undefined. */
export function regionOfKeyArn(keyId: string | undefined): string | undefined {
  return /^arn:aws[a-z-]*:kms:([a-z0-9-]+):/.exec(keyId ?? "")?.[1];
}

/**
 * Settings that are valid but that this build cannot honour safely: none today. (At-rest
 * encryption was refused here until the log encrypted its segments; see docs/encryption.md.)
 */
export function refusalsOfThisBuild(_settings: Settings): string[] {
  return [];
}

/** "flag --data-dir", "env VERITY_NODE_ID", "config file", "default": for the startup log line. */
export function originLabel(origin: SettingOrigin): string {
  switch (origin.kind) {
    case "flag":
      return `flag ${origin.name}`;
    case "env":
      return `env ${origin.name}`;
    case "file":
      return "config file";
    case "default":
      return "default";
  }
}

/** The keys not at their default, with where each value came from. */
export function settingsNotDefault(settings: Settings): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [path, origin] of Object.entries(settings.origins)) if (origin.kind !== "default") out[path] = originLabel(origin);
  return out;
}

