/**
 * How far a node's wall clock is from ours, for `verity-admin doctor`. The Admin API exposes no
 * timestamp, so this reads the HTTP `Date` header of the node's `/status` (client port): the node's
 * time, truncated to the second, at some moment between sending the request and receiving the answer.
 *
 * One answer bounds the offset (node clock minus ours) to an interval about a second wide:
 * `date - received <= offset < date + 1000 - sent`. Later requests are timed so that, by the current
 * estimate, they reach the node just at a second boundary; whichever second the node then names
 * halves the interval. A few requests bring it down to about the round trip.
 *
 * `judgeClocks` turns the offsets into doctor's clock-skew verdict.
 */

import * as http from "node:http";
import * as https from "node:https";
import * as net from "node:net";
import { readFileSync } from "node:fs";
import type { ClientTlsFiles } from "../client/admin-client.js";
import { parseHostPort } from "../server/setting-values.js";
import { fail, pass, warn, type CheckResult } from "./check-result.js";

/** Clocks further apart than this are a warning: log timestamps and "last seen" times mislead. */
export const CLOCK_SKEW_WARN_MS = 1_000;
/** Clocks further apart than this are a failure: certificate validity is judged wrongly near its edges too. */
export const CLOCK_SKEW_FAIL_MS = 60_000;
/** Requests per node at most. */
export const CLOCK_SAMPLES_MAX = 6;
/** Stop sampling once the offset is known to within this. */
export const CLOCK_OFFSET_WIDTH_TARGET_MS = 100;
/** One request may take this long. */
export const CLOCK_REQUEST_TIMEOUT_MS = 3_000;
/**
 * Node caches its Date header per second and renews it on a timer, which may fire a little late:
 * the header can name the previous second for a few milliseconds after the boundary.
 */
export const CLOCK_DATE_LATE_MS = 20;

/** The node's clock minus ours, in milliseconds: somewhere in [lowMs, highMs]. */
export interface OffsetBounds {
  lowMs: number;
  highMs: number;
}

/** One request: our clock when it was sent and when its answer arrived, and the node's Date header. */
export interface ClockSample {
  sentMs: number;
  receivedMs: number;
  dateMs: number;
}

export type OffsetMeasurement =
  | { ok: true; bounds: OffsetBounds; samples: number; rttMs: number }
  | { ok: false; reason: string };

export function boundsOf(sample: ClockSample): OffsetBounds {
  return { lowMs: sample.dateMs - sample.receivedMs, highMs: sample.dateMs + 1000 + CLOCK_DATE_LATE_MS - sample.sentMs };
}

/** Both bounds at once, or undefined when they do not overlap (a clock was stepped between requests). */
export function intersect(a: OffsetBounds, b: OffsetBounds): OffsetBounds | undefined {
  const lowMs = Math.max(a.lowMs, b.lowMs);
  const highMs = Math.min(a.highMs, b.highMs);
  return lowMs <= highMs ? { lowMs, highMs } : undefined;
}

/** The difference of two offsets (x - y): every value it can take. */
export function difference(x: OffsetBounds, y: OffsetBounds): OffsetBounds {
  return { lowMs: x.lowMs - y.highMs, highMs: x.highMs - y.lowMs };
}

/** The least |skew| the bounds allow: 0 when they include 0. */
export function certainSkewMs(d: OffsetBounds): number {
  return d.lowMs > 0 ? d.lowMs : d.highMs < 0 ? -d.highMs : 0;
}

export function midpoint(d: OffsetBounds): number {
  return (d.lowMs + d.highMs) / 2;
}

/** When to send the next request so that, by the estimate `bounds`, it reaches the node at a second boundary. */
export function nextSendMs(bounds: OffsetBounds, oneWayMs: number, nowMs: number): number {
  const offset = midpoint(bounds);
  const boundary = Math.ceil((nowMs + oneWayMs + offset) / 1000) * 1000;
  const send = boundary - offset - oneWayMs;
  return send < nowMs + 5 ? send + 1000 : send;
}

type Getter = (options: https.RequestOptions, callback: (res: http.IncomingMessage) => void) => http.ClientRequest;

/** One GET /status; resolves with its timing and Date header, or the reason it failed. */
function sampleOnce(get: Getter, options: https.RequestOptions): Promise<ClockSample | string> {
  return new Promise((resolve) => {
    const sentMs = Date.now();
    const request = get(options, (res) => {
      const receivedMs = Date.now();
      res.resume();
      const header = res.headers.date;
      const dateMs = header === undefined ? NaN : Date.parse(header);
      resolve(Number.isFinite(dateMs) ? { sentMs, receivedMs, dateMs } : `the answer of /status has no usable Date header (${header ?? "none"})`);
    });
    request.on("timeout", () => request.destroy(new Error(`no answer within ${CLOCK_REQUEST_TIMEOUT_MS} ms`)));
    request.on("error", (e: NodeJS.ErrnoException) => resolve(e.code ?? e.message));
  });
}

/** Measures the offset of the node whose client port is `endpoint` (host:port), over HTTPS when `tls` is given. */
export async function measureOffset(endpoint: string, tls: ClientTlsFiles | undefined): Promise<OffsetMeasurement> {
  const parsed = parseHostPort(endpoint);
  if (!parsed.ok) return { ok: false, reason: `${endpoint} ${parsed.reason}` };
  const { host, port } = parsed.value;
  const agentOptions = { keepAlive: true, maxSockets: 1 };
  const agent = tls === undefined ? new http.Agent(agentOptions) : new https.Agent(agentOptions);
  const options: https.RequestOptions = {
    host, port, path: "/status", agent, timeout: CLOCK_REQUEST_TIMEOUT_MS,
    ...(tls === undefined ? {} : {
      ca: readFileSync(tls.ca), cert: readFileSync(tls.cert), key: readFileSync(tls.key),
      // As the Admin API client does: loopback certificates name "localhost".
      servername: host === "127.0.0.1" ? "localhost" : net.isIP(host) === 0 ? host : undefined,
    }),
  };
  const get: Getter = tls === undefined ? http.get : https.get;
  try {
    let bounds: OffsetBounds | undefined;
    let rttMs = Infinity;
    let samples = 0;
    // Bounded: CLOCK_SAMPLES_MAX requests.
    while (samples < CLOCK_SAMPLES_MAX) {
      if (bounds !== undefined) {
        const wait = nextSendMs(bounds, rttMs / 2, Date.now()) - Date.now();
        if (wait > 0) await new Promise((r) => setTimeout(r, wait));
      }
      const sample = await sampleOnce(get, options);
      if (typeof sample === "string") {
        if (bounds === undefined) return { ok: false, reason: sample };
        break;
      }
      samples++;
      rttMs = Math.min(rttMs, sample.receivedMs - sample.sentMs);
      const next = boundsOf(sample);
      // Inconsistent with what came before: a clock was stepped; start again from this answer.
      bounds = bounds === undefined ? next : (intersect(bounds, next) ?? next);
      if (bounds.highMs - bounds.lowMs <= CLOCK_OFFSET_WIDTH_TARGET_MS) break;
    }
    return { ok: true, bounds: bounds!, samples, rttMs };
  } finally {
    agent.destroy();
  }
}

function formatOffset(b: OffsetBounds): string {
  const mid = Math.round(midpoint(b));
  return `${mid >= 0 ? "+" : ""}${mid} ms (±${Math.ceil((b.highMs - b.lowMs) / 2)} ms)`;
}

/** One member's clock as measured: its offset from this machine's clock, or why it could not be read. */
export interface MemberClock {
  id: number;
  endpoint: string;
  measurement: OffsetMeasurement;
}

/**
 * The clock-skew verdict: the largest skew the measurements prove, between any two members or a
 * member and this machine (whose clock the doctor's own certificate and "last seen" judgements use).
 */
export function judgeClocks(measured: readonly MemberClock[], unmeasured: readonly number[]): CheckResult {
  const details: string[] = [];
  const clocks: Array<{ who: string; bounds: OffsetBounds }> = [{ who: "this machine", bounds: { lowMs: 0, highMs: 0 } }];
  for (const x of measured) {
    if (x.measurement.ok) {
      clocks.push({ who: `node ${x.id}`, bounds: x.measurement.bounds });
      details.push(`node ${x.id} (${x.endpoint}): ${formatOffset(x.measurement.bounds)} from this machine's clock`);
    } else details.push(`node ${x.id} (${x.endpoint}): could not be measured: ${x.measurement.reason}`);
  }
  if (unmeasured.length > 0) details.push(`not measured: node ${unmeasured.join(", node ")} (give their client addresses in --endpoints)`);
  if (clocks.length === 1) {
    return warn("clock-skew", "could not be measured: no member's /status answered with a Date header",
      "check that /status answers on the client port (curl it, with a client certificate under TLS)", details);
  }
  let worst = { skewMs: 0, between: "" };
  for (const [i, x] of clocks.entries()) {
    for (const y of clocks.slice(i + 1)) {
      const skewMs = certainSkewMs(difference(x.bounds, y.bounds));
      if (skewMs > worst.skewMs) worst = { skewMs, between: `${x.who} and ${y.who}` };
    }
  }
  const found = worst.skewMs === 0
    ? `clocks agree within the measurement's precision (${clocks.length - 1} member${clocks.length === 2 ? "" : "s"} and this machine)`
    : `the clocks of ${worst.between} are at least ${worst.skewMs} ms apart`;
  const fix = "run time synchronisation on every node (chrony or systemd-timesyncd: timedatectl set-ntp true) and check 'chronyc tracking' or 'timedatectl'";
  if (worst.skewMs > CLOCK_SKEW_FAIL_MS) return fail("clock-skew", found, fix, details);
  if (worst.skewMs > CLOCK_SKEW_WARN_MS) return warn("clock-skew", found, fix, details);
  return pass("clock-skew", found, details);
}
