/**
 * verity: the data-plane client. `append`, `read`, `read-all` and `tail` over the Client API with
 * src/client/verity-client.ts: endpoint failover, and appends retried with the same request id.
 * Connection: `--endpoints` and the TLS flags, or VERITY_ENDPOINTS, VERITY_TLS_CA, VERITY_TLS_CERT,
 * VERITY_TLS_KEY. Exit codes: 0 ok, 1 refused or failed, 2 bad usage.
 */

import { createInterface } from "node:readline";
import { hideBin } from "yargs/helpers";
import type { Argv } from "yargs";
import { ExitCode, cli } from "./common.js";
import { VerityClient, VerityClientError, type ExpectedVersion, type NewEvent, type StoredEvent } from "../client/verity-client.js";
import { ENDPOINTS_DEFAULT, endpointsOf, splitList, tlsOf } from "./admin-connection.js";
import { UsageError, errorCodeOfGrpc } from "./admin-output.js";
import { VerityError } from "../errors.js";

const NAME = "verity";
const env = process.env;

/** Events per append when reading events from stdin, by default and at most. */
export const STDIN_BATCH_DEFAULT = 100;
export const STDIN_BATCH_MAX = 10_000;
/** A stdin line longer than this is refused (a record is at most 16 MiB). */
const STDIN_LINE_BYTES_MAX = 17 * 1024 * 1024;

const connection = {
  endpoints: { type: "string", default: env.VERITY_ENDPOINTS ?? ENDPOINTS_DEFAULT, describe: "Client addresses of cluster nodes, comma-separated (env VERITY_ENDPOINTS)" },
  "tls-ca": { type: "string", default: env.VERITY_TLS_CA, describe: "CA certificate that signed the nodes' certificates (env VERITY_TLS_CA)" },
  "tls-cert": { type: "string", default: env.VERITY_TLS_CERT, describe: "Your client certificate, with a [[security.clients]] grant for the tenant (env VERITY_TLS_CERT)" },
  "tls-key": { type: "string", default: env.VERITY_TLS_KEY, describe: "Your client certificate's private key (env VERITY_TLS_KEY)" },
} as const;

interface Conn {
  endpoints: string;
  "tls-ca"?: string;
  "tls-cert"?: string;
  "tls-key"?: string;
}

function clientOf(a: Conn): VerityClient {
  return new VerityClient({ endpoints: endpointsOf(a), tls: tlsOf(a) });
}

function parseExpected(text: string | undefined): ExpectedVersion | undefined {
  if (text === undefined) return undefined;
  if (text === "any" || text === "no-stream") return text;
  if (/^\d+$/.test(text)) return Number(text);
  throw new UsageError(`--expected-version "${text}" must be a version number, "any" or "no-stream"`);
}

function parseMetadata(items: readonly string[] | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  for (const item of items ?? []) {
    const eq = item.indexOf("=");
    if (eq < 1) throw new UsageError(`--metadata "${item}" must be key=value`);
    out[item.slice(0, eq)] = item.slice(eq + 1);
  }
  return out;
}

function jsonText(text: string, what: string): string {
  try {
    JSON.parse(text);
  } catch (e) {
    throw new UsageError(`${what} is not valid JSON (${e instanceof Error ? e.message : String(e)}); quote it for the shell, e.g. --data '{"id": 1}'`);
  }
  return text;
}

/** An event's data for printing: its JSON value when it is JSON text, else the text. */
function dataValue(data: Uint8Array): unknown {
  const text = Buffer.from(data).toString("utf8");
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return text;
  }
}

function eventJson(e: StoredEvent): object {
  return {
    position: e.position, stream: e.stream, version: e.version, type: e.type, data: dataValue(e.data), metadata: e.metadata,
    event_id: e.eventId, timestamp: new Date(e.timestampMs).toISOString(),
  };
}

function eventLine(e: StoredEvent): string {
  const data = Buffer.from(e.data).toString("utf8");
  return `${String(e.position).padStart(10)}  ${e.stream}@${e.version}  ${new Date(e.timestampMs).toISOString()}  ${e.type}  ${data.length > 200 ? data.slice(0, 200) + "..." : data}`;
}

/** Runs a command body; reports failures as one sentence on stderr and sets the exit code. */
function command<A>(body: (a: A) => Promise<number>): (args: unknown) => Promise<void> {
  return async (args: unknown) => {
    let code: number;
    try {
      code = await body(args as A);
    } catch (e) {
      code = report(e);
    }
    process.exitCode = code;
  };
}

function report(e: unknown): number {
  if (e instanceof UsageError) {
    process.stderr.write(`${NAME}: ${e.message}\nRun '${NAME} --help' for usage.\n`);
    return ExitCode.USAGE;
  }
  if (e instanceof VerityClientError) {
    process.stderr.write(`${NAME}: error: ${e.message} (${errorCodeOfGrpc(e.code)}, gRPC status ${e.codeName})\n`);
    return ExitCode.FAILED;
  }
  if (e instanceof VerityError) {
    process.stderr.write(`${NAME}: error: ${e.message}\n`);
    return ExitCode.FAILED;
  }
  process.stderr.write(`${NAME}: unexpected error (please report it): ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
  return ExitCode.FAILED;
}

type AppendArgs = Conn & {
  tenant: string; stream: string; type?: string; data?: string; metadata?: string[]; "expected-version"?: string;
  "request-id"?: string; "batch-size": number; json: boolean;
};

async function append(a: AppendArgs): Promise<number> {
  const expected = parseExpected(a["expected-version"]);
  const metadata = parseMetadata(a.metadata);
  const client = clientOf(a);
  try {
    if (a.data !== undefined) {
      if (a.type === undefined) throw new UsageError("--type is required with --data");
      const r = await client.append({
        tenant: a.tenant, stream: a.stream, events: [{ type: a.type, data: jsonText(a.data, "--data"), metadata }],
        ...(expected === undefined ? {} : { expectedVersion: expected }), ...(a["request-id"] === undefined ? {} : { requestId: a["request-id"] }),
      });
      if (a.json) process.stdout.write(JSON.stringify({ position: r.firstPosition, version: r.firstVersion, deduplicated: r.deduplicated, request_id: r.requestId }) + "\n");
      else process.stdout.write(`appended to ${a.tenant}/${a.stream}: position ${r.firstPosition}, version ${r.firstVersion}${r.deduplicated ? " (a retry: the first append's result)" : ""}\n`);
      return ExitCode.OK;
    }
    if (a["request-id"] !== undefined) throw new UsageError("--request-id goes with --data (stdin batches get one request id each)");
    return await appendStdin(client, a, expected, metadata);
  } finally {
    client.close();
  }
}

/** Newline-delimited JSON events from stdin, appended in batches; each batch expects the version the previous one reached. */
async function appendStdin(client: VerityClient, a: AppendArgs, expected: ExpectedVersion | undefined, metadata: Record<string, string>): Promise<number> {
  if (process.stdin.isTTY) process.stderr.write(`${NAME}: reading events from stdin, one JSON object per line ({"type": ..., "data": ...}); end with Ctrl-D\n`);
  const batchSize = a["batch-size"];
  if (!Number.isInteger(batchSize) || batchSize < 1 || batchSize > STDIN_BATCH_MAX) throw new UsageError(`--batch-size must be 1 to ${STDIN_BATCH_MAX}`);
  const started = performance.now();
  let batch: NewEvent[] = [];
  let events = 0;
  let batches = 0;
  let first: number | undefined;
  let last = 0;
  let version: ExpectedVersion | undefined = expected;
  const flush = async (): Promise<void> => {
    if (batch.length === 0) return;
    const r = await client.append({ tenant: a.tenant, stream: a.stream, events: batch, ...(version === undefined ? {} : { expectedVersion: version }) });
    first ??= r.firstPosition;
    last = r.lastPosition;
    if (version !== undefined) version = r.lastVersion;
    events += batch.length;
    batches++;
    batch = [];
  };
  const lines = createInterface({ input: process.stdin, crlfDelay: Infinity });
  let lineNo = 0;
  for await (const line of lines) {
    lineNo++;
    if (line.trim() === "") continue;
    if (line.length > STDIN_LINE_BYTES_MAX) throw new UsageError(`stdin line ${lineNo} is longer than ${STDIN_LINE_BYTES_MAX} bytes`);
    let o: { type?: unknown; data?: unknown; metadata?: unknown };
    try {
      o = JSON.parse(line) as typeof o;
    } catch (e) {
      throw new UsageError(`stdin line ${lineNo} is not JSON (${e instanceof Error ? e.message : String(e)}); ${events} events were appended before it`);
    }
    if (typeof o.type !== "string" || o.type === "") throw new UsageError(`stdin line ${lineNo} has no "type" string; ${events} events were appended before it`);
    const md = typeof o.metadata === "object" && o.metadata !== null ? { ...metadata, ...(o.metadata as Record<string, string>) } : metadata;
    batch.push({ type: o.type, data: JSON.stringify(o.data ?? null), metadata: md });
    if (batch.length >= batchSize) await flush();
  }
  await flush();
  const seconds = (performance.now() - started) / 1000;
  const summary = { events, batches, first_position: first ?? null, last_position: first === undefined ? null : last, seconds: Number(seconds.toFixed(3)) };
  if (a.json) process.stdout.write(JSON.stringify(summary) + "\n");
  else {
    process.stdout.write(
      events === 0
        ? "no events on stdin; nothing appended\n"
        : `appended ${events} events in ${batches} batches to ${a.tenant}/${a.stream} (positions ${first}..${last}) in ${seconds.toFixed(2)} s, ${Math.round(events / seconds)} events/s\n`,
    );
  }
  return ExitCode.OK;
}

type ReadArgs = Conn & { tenant: string; stream?: string; from: number; limit: number; consistency: string; json: boolean };

async function read(a: ReadArgs, all: boolean): Promise<number> {
  const consistency = a.consistency === "local" ? "local" : "linearizable";
  const client = clientOf(a);
  try {
    const r = all
      ? await client.readAll({ tenant: a.tenant, fromPosition: a.from, limit: a.limit, consistency })
      : await client.read({ tenant: a.tenant, stream: a.stream!, fromVersion: a.from, limit: a.limit, consistency });
    for (const e of r.events) process.stdout.write((a.json ? JSON.stringify(eventJson(e)) : eventLine(e)) + "\n");
    if (!a.json) {
      const lag = consistency === "local" && r.lagEntries > 0 ? `, ${r.lagEntries} entries behind the commit index` : "";
      process.stderr.write(`${r.events.length} events (node applied position ${r.appliedPosition}${lag})\n`);
    }
    return ExitCode.OK;
  } finally {
    client.close();
  }
}

type TailArgs = Conn & { tenant: string; stream?: string; from: number; json: boolean };

async function tail(a: TailArgs): Promise<number> {
  const client = clientOf(a);
  const abort = new AbortController();
  const stop = (): void => abort.abort();
  process.once("SIGINT", stop);
  process.once("SIGTERM", stop);
  try {
    const events = client.subscribe({ tenant: a.tenant, fromPosition: a.from, signal: abort.signal, ...(a.stream === undefined ? {} : { stream: a.stream }) });
    for await (const e of events) process.stdout.write((a.json ? JSON.stringify(eventJson(e)) : eventLine(e)) + "\n");
    return ExitCode.OK;
  } finally {
    process.off("SIGINT", stop);
    process.off("SIGTERM", stop);
    client.close();
  }
}

type QueryArgs = Conn & { tenant: string; sql: string; param?: string[]; consistency: string; limit: number; json: boolean };

function cell(v: unknown): string {
  if (v === null) return "NULL";
  return typeof v === "object" ? JSON.stringify(v) : String(v);
}

async function query(a: QueryArgs): Promise<number> {
  const params: Record<string, string> = {};
  for (const p of a.param ?? []) {
    const eq = p.indexOf("=");
    if (eq < 1) throw new UsageError(`--param "${p}" must be name=value (binds :name)`);
    params[p.slice(0, eq)] = p.slice(eq + 1);
  }
  const client = clientOf(a);
  try {
    const r = await client.query({ tenant: a.tenant, sql: a.sql, params, consistency: a.consistency === "local" ? "local" : "linearizable", limit: a.limit });
    if (a.json) {
      for (const row of r.rows) process.stdout.write(JSON.stringify(Object.fromEntries(r.columns.map((c, i) => [c, row[i]]))) + "\n");
    } else {
      const cells = r.rows.map((row) => row.map(cell));
      const widths = r.columns.map((c, i) => Math.min(60, Math.max(c.length, ...cells.map((row) => row[i]!.length))));
      const line = (values: string[]): string => values.map((v, i) => (v.length > widths[i]! ? v.slice(0, widths[i]! - 1) + "~" : v.padEnd(widths[i]!))).join("  ").trimEnd();
      process.stdout.write(line(r.columns) + "\n" + widths.map((w) => "-".repeat(w)).join("  ") + "\n");
      for (const row of cells) process.stdout.write(line(row) + "\n");
      process.stderr.write(`${r.rows.length} rows${r.truncated ? ` (cut at the limit; raise --limit or narrow the query)` : ""} at applied position ${r.appliedPosition}\n`);
    }
    return ExitCode.OK;
  } finally {
    client.close();
  }
}

const tenantOption = { tenant: { type: "string", demandOption: true, describe: "Tenant id" } } as const;
const jsonOption = { json: { type: "boolean", default: false, describe: "One JSON object per line" } } as const;
const consistencyOption = {
  consistency: { choices: ["linearizable", "local"], default: "linearizable", describe: "linearizable: through the leader's read point; local: this node's state, maybe stale" },
} as const;

function commands(y: Argv): Argv {
  return y
    .command("append", "Append an event (--data), or newline-delimited JSON events from stdin, to a stream",
      (c) => c.options({
        ...connection, ...tenantOption,
        stream: { type: "string", demandOption: true, describe: "Stream name" },
        type: { type: "string", describe: "Event type (with --data)" },
        data: { type: "string", describe: "Event data as JSON; without it, events are read from stdin as {\"type\": ..., \"data\": ...} lines" },
        metadata: { type: "array", string: true, describe: "key=value metadata, repeatable" },
        "expected-version": { type: "string", describe: "The stream's current version (a number), any, or no-stream; the append fails if it differs" },
        "request-id": { type: "string", describe: "Idempotency key: a retry with the same id returns the first result (default: a new UUID)" },
        "batch-size": { type: "number", default: STDIN_BATCH_DEFAULT, describe: "Events per append when reading stdin" },
        ...jsonOption,
      })
        .example("$0 append --tenant acme --stream order-42 --type OrderPlaced --data '{\"total\": 99}'", "Append one event")
        .example("$0 append --tenant acme --stream order-42 --type OrderPaid --data '{}' --expected-version 0", "Only if the stream is at version 0")
        .example("cat events.ndjson | $0 append --tenant acme --stream import-1", "Append events from a file, 100 per batch"),
      command(append))
    .command("read", "Read a stream's events by version",
      (c) => c.options({
        ...connection, ...tenantOption,
        stream: { type: "string", demandOption: true, describe: "Stream name" },
        from: { type: "number", default: 0, describe: "First version to read" },
        limit: { type: "number", default: 1000, describe: "Most events to print (at most 10000)" },
        ...consistencyOption, ...jsonOption,
      })
        .example("$0 read --tenant acme --stream order-42", "Every event of the stream")
        .example("$0 read --tenant acme --stream order-42 --from 10 --consistency local --json", "From version 10, this node's view, as JSON lines"),
      command((a: ReadArgs) => read(a, false)))
    .command("read-all", "Read a tenant's events across its streams by position",
      (c) => c.options({
        ...connection, ...tenantOption,
        from: { type: "number", default: 0, describe: "First position to read" },
        limit: { type: "number", default: 1000, describe: "Most events to print (at most 10000)" },
        ...consistencyOption, ...jsonOption,
      }).example("$0 read-all --tenant acme --from 1000 --json", "The tenant's events from position 1000"),
      command((a: ReadArgs) => read(a, true)))
    .command("tail", "Follow a tenant's (or one stream's) events: committed ones from --from, then new ones live (Ctrl-C ends)",
      (c) => c.options({
        ...connection, ...tenantOption,
        stream: { type: "string", describe: "Only this stream" },
        from: { type: "number", default: 0, describe: "First position (resume after the last one you saw)" },
        ...jsonOption,
      }).example("$0 tail --tenant acme --json", "Every event of tenant acme, then new ones"),
      command(tail))
    .command("query", "Run a read-only SQL query over a tenant's projections",
      (c) => c.options({
        ...connection, ...tenantOption,
        sql: { type: "string", demandOption: true, describe: "One SELECT statement; :name binds --param name=value" },
        param: { type: "array", string: true, describe: "name=value, repeatable" },
        limit: { type: "number", default: 0, describe: "Rows at most (0: the server's limit, max_query_rows)" },
        ...consistencyOption, ...jsonOption,
      })
        .example("$0 query --tenant acme --sql 'SELECT ward, COUNT(*) AS n FROM patients GROUP BY ward'", "A table for people")
        .example("$0 query --tenant acme --sql 'SELECT * FROM patients WHERE id = :id' --param id=7 --json", "One JSON object per row"),
      command(query))
    .demandCommand(1, "a command is required: append, read, read-all, tail or query");
}

await commands(cli(NAME, hideBin(process.argv), "Append, read and follow VerityDB event streams.", "verity <command> [options]"))
  .middleware((a) => {
    // The list flags are validated here so every command reports bad usage the same way (exit 2).
    if (typeof a.endpoints === "string" && splitList(a.endpoints).length === 0) {
      process.stderr.write(`${NAME}: --endpoints is empty: give the client address host:port of at least one node\n`);
      process.exit(ExitCode.USAGE);
    }
  })
  .parseAsync();
