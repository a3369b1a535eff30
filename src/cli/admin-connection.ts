/**
 * How verity-admin reaches a node: the Admin API over gRPC (`--endpoints` and the TLS flags, or
 * VERITY_ENDPOINTS, VERITY_TLS_CA, VERITY_TLS_CERT, VERITY_TLS_KEY), and the node's metrics
 * address over HTTP (`--metrics-endpoint`, or VERITY_METRICS_ENDPOINT).
 */

import * as http from "node:http";
import { AdminApi, type ClientTlsFiles } from "../client/admin-client.js";
import { ErrorCode, VerityError } from "../errors.js";
import { UsageError } from "./admin-output.js";

/** How long reading a node's /metrics may take. */
export const METRICS_TIMEOUT_MS = 5_000;
/** A metrics page larger than this is cut off with an error (a node's page is tens of kilobytes). */
export const METRICS_TEXT_BYTES_MAX = 16 * 1024 * 1024;
/** Samples printed by `metrics --json` at most (the page is bounded above; this bounds the object). */
export const METRICS_SAMPLES_MAX = 100_000;

const env = process.env;

/** The admin tool's own environment variables (never verity-server settings). */
export const ADMIN_ENV_VARIABLES: readonly string[] = ["VERITY_ENDPOINTS", "VERITY_TLS_CA", "VERITY_TLS_CERT", "VERITY_TLS_KEY", "VERITY_METRICS_ENDPOINT"];

export const ENDPOINTS_DEFAULT = "127.0.0.1:7000";
export const METRICS_ENDPOINT_DEFAULT = "127.0.0.1:9090";

export const jsonOption = {
  json: { type: "boolean", default: false, describe: "Print one machine-readable JSON object on stdout (errors as {\"error\": {\"code\", \"message\"}})" },
} as const;

export const tlsOptions = {
  "tls-ca": { type: "string", default: env.VERITY_TLS_CA, describe: "CA certificate that signed the nodes' certificates (env VERITY_TLS_CA)" },
  "tls-cert": { type: "string", default: env.VERITY_TLS_CERT, describe: "Your client certificate, with an identity in [security] admins (env VERITY_TLS_CERT)" },
  "tls-key": { type: "string", default: env.VERITY_TLS_KEY, describe: "Your client certificate's private key (env VERITY_TLS_KEY)" },
} as const;

export const connectionOptions = {
  endpoints: { type: "string", default: env.VERITY_ENDPOINTS ?? ENDPOINTS_DEFAULT, describe: "Client addresses of cluster nodes, comma-separated (env VERITY_ENDPOINTS)" },
  ...tlsOptions,
  ...jsonOption,
} as const;

export const metricsEndpointOption = {
  "metrics-endpoint": {
    type: "string", default: env.VERITY_METRICS_ENDPOINT ?? METRICS_ENDPOINT_DEFAULT,
    describe: "The node's metrics address host:port, its --metrics-address (env VERITY_METRICS_ENDPOINT)",
  },
} as const;

/** The parsed connection flags. */
export interface Connection {
  endpoints: string;
  "tls-ca"?: string;
  "tls-cert"?: string;
  "tls-key"?: string;
  json: boolean;
}

/** The TLS files, all three or none (plaintext, loopback only). */
export function tlsOf(a: Pick<Connection, "tls-ca" | "tls-cert" | "tls-key">): ClientTlsFiles | undefined {
  const any = a["tls-ca"] ?? a["tls-cert"] ?? a["tls-key"];
  if (any === undefined) return undefined;
  if (a["tls-ca"] === undefined || a["tls-cert"] === undefined || a["tls-key"] === undefined) {
    throw new UsageError("give --tls-ca, --tls-cert and --tls-key together (mutual TLS), or none of them for a plaintext loopback node");
  }
  return { ca: a["tls-ca"], cert: a["tls-cert"], key: a["tls-key"] };
}

export function splitList(text: string): string[] {
  return text.split(",").map((e) => e.trim()).filter((e) => e !== "");
}

export function endpointsOf(a: Pick<Connection, "endpoints">): string[] {
  const endpoints = splitList(a.endpoints);
  if (endpoints.length === 0) throw new UsageError("--endpoints is empty: give the client address host:port of at least one node");
  return endpoints;
}

export function api(a: Connection): AdminApi {
  return new AdminApi({ endpoints: endpointsOf(a), tls: tlsOf(a) });
}

/**
 * GET /metrics on a node's metrics address; the page's text, or an UNAVAILABLE error saying what to
 * check. node:http, not fetch: fetch refuses some ports outright ("bad port") that a node may use.
 */
export function fetchMetricsText(endpoint: string): Promise<string> {
  const url = `http://${endpoint}/metrics`;
  const cannot = (why: string): VerityError =>
    new VerityError(ErrorCode.UNAVAILABLE, `cannot read ${url}: ${why}; is the node running, and is --metrics-endpoint its --metrics-address (telemetry.metrics_address)?`);
  return new Promise((resolve, reject) => {
    let request: http.ClientRequest;
    try {
      request = http.get(url, { timeout: METRICS_TIMEOUT_MS }, (res) => {
        if (res.statusCode !== 200) {
          res.resume();
          reject(cannot(`HTTP ${res.statusCode}`));
          return;
        }
        const chunks: Buffer[] = [];
        let bytes = 0;
        res.on("data", (chunk: Buffer) => {
          bytes += chunk.length;
          if (bytes > METRICS_TEXT_BYTES_MAX) {
            res.destroy();
            reject(cannot(`the page is larger than ${METRICS_TEXT_BYTES_MAX} bytes`));
          } else chunks.push(chunk);
        });
        res.on("end", () => resolve(Buffer.concat(chunks).toString("utf8")));
        res.on("error", (e) => reject(cannot(e.message)));
      });
    } catch (e) {
      reject(cannot(e instanceof Error ? e.message : String(e)));
      return;
    }
    request.on("timeout", () => request.destroy(new Error(`no answer within ${METRICS_TIMEOUT_MS} ms`)));
    request.on("error", (e: NodeJS.ErrnoException) => reject(cannot(e.code ?? e.message)));
  });
}

/** One Prometheus sample. `value` is a number, or the text of a non-finite value ("+Inf", "NaN"). */
export interface MetricSample {
  name: string;
  labels: Record<string, string>;
  value: number | string;
}

const SAMPLE_LINE = /^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\S+)?$/;
const LABEL = /([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"/g;

/** The samples of a Prometheus text page (comment lines skipped), at most METRICS_SAMPLES_MAX. */
export function parseMetrics(lines: readonly string[]): MetricSample[] {
  const samples: MetricSample[] = [];
  for (const line of lines.slice(0, METRICS_SAMPLES_MAX)) {
    if (line.startsWith("#")) continue;
    const m = SAMPLE_LINE.exec(line);
    if (m === null) continue;
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? "").matchAll(LABEL)) labels[l[1]!] = l[2]!.replace(/\\(.)/g, (_, c: string) => (c === "n" ? "\n" : c));
    const number = Number(m[3]);
    samples.push({ name: m[1]!, labels, value: Number.isFinite(number) ? number : m[3]! });
  }
  return samples;
}
