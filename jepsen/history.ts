/**
 * The history of a run: every client operation as an `invoke` line and then an `ok`, `fail` or
 * `info` line, subscription deliveries, and nemesis and node events, on one monotonic clock
 * (milliseconds since the run began). Kept in memory for the checker and written to
 * `history.jsonl` as it happens (buffered, flushed every HISTORY_FLUSH_MS), so a run that dies
 * still leaves its history behind.
 */

import { appendFileSync, writeFileSync } from "node:fs";
import { performance } from "node:perf_hooks";

export type Consistency = "linearizable" | "local";
export type Expected = "any" | "no-stream" | number;
export type OpKind = "append" | "read" | "query" | "digest";
export type Outcome = "ok" | "fail" | "info";

export interface AppendValue {
  tenant: string;
  stream: string;
  /** The event ids of the batch, in order (unique in the whole run). */
  events: string[];
  expected: Expected;
  requestId: string;
}

export interface AppendResult {
  firstVersion: number;
  lastVersion: number;
  firstPosition: number;
  lastPosition: number;
  deduplicated: boolean;
}

export interface ReadValue {
  tenant: string;
  stream: string;
  consistency: Consistency;
}

/** [version, event id, position] in version order. */
export type ReadEventTuple = [version: number, eventId: string, position: number];

export interface ReadResult {
  events: ReadEventTuple[];
  appliedPosition: number;
}

export interface QueryValue {
  tenant: string;
  consistency: Consistency;
}

/** The projection's fold, as the query saw it: rows, and sums that a lost or doubled row changes. */
export interface QueryResult {
  appliedPosition: number;
  count: number;
  positionSum: number;
  versionSum: number;
  /** Rows whose tenant is not the queried one (must be 0). */
  foreign: number;
}

export interface DigestValue {
  tenant: string;
}

export interface DigestResult {
  appliedPosition: number;
  digest: string;
  /** Projections not in state "running", as "name: state". */
  notRunning: string[];
}

export interface OpError {
  /** gRPC status name, or a harness reason. */
  code: string;
  message: string;
}

export interface InvokeLine {
  type: "invoke";
  id: number;
  process: number;
  node: number;
  /** The node's data generation (bumped each time its data directory is replaced). */
  gen: number;
  f: OpKind;
  time: number;
  value: AppendValue | ReadValue | QueryValue | DigestValue;
}

export interface CompleteLine {
  type: Outcome;
  id: number;
  process: number;
  node: number;
  f: OpKind;
  time: number;
  result?: AppendResult | ReadResult | QueryResult | DigestResult;
  error?: OpError;
}

/** [position, stream, version, event id] in delivery order. */
export type SubEventTuple = [position: number, stream: string, version: number, eventId: string];

export interface SubLine {
  type: "sub";
  sub: number;
  tenant: string;
  node: number;
  time: number;
  events: SubEventTuple[];
}

export interface SubStartLine {
  type: "sub-start";
  sub: number;
  tenant: string;
  node: number;
  time: number;
  from: number;
}

export interface SubErrorLine {
  type: "sub-error";
  sub: number;
  node: number;
  time: number;
  message: string;
}

export interface NemesisLine {
  type: "nemesis";
  /** The fault's id: its start and end lines share it. */
  fault: number;
  /** The --nemesis name it counts under. */
  f: string;
  phase: "start" | "end";
  time: number;
  detail: Record<string, unknown>;
}

export interface NodeLine {
  type: "node";
  node: number;
  time: number;
  event: string;
  detail?: Record<string, unknown>;
}

export type HistoryLine = InvokeLine | CompleteLine | SubLine | SubStartLine | SubErrorLine | NemesisLine | NodeLine;

/** Buffered lines are written at least this often. */
const HISTORY_FLUSH_MS = 200;
/** ... or when this many bytes wait. */
const HISTORY_BUFFER_BYTES_MAX = 1024 * 1024;
/** Lines kept in memory at most (a 30-minute run at the default rate makes about 200,000). */
export const HISTORY_LINES_MAX = 5_000_000;

export class History {
  readonly lines: HistoryLine[] = [];
  private readonly start = performance.now();
  private nextOp = 1;
  private nextFault = 1;
  private buffer: string[] = [];
  private bufferBytes = 0;
  private readonly timer: NodeJS.Timeout | undefined;

  /** `path`: the JSONL file to write (none: memory only). */
  constructor(private readonly path?: string) {
    if (path !== undefined) {
      writeFileSync(path, "");
      this.timer = setInterval(() => this.flush(), HISTORY_FLUSH_MS);
      this.timer.unref();
    }
  }

  /** Milliseconds since the run began, on the monotonic clock. */
  now(): number {
    return Math.round((performance.now() - this.start) * 1000) / 1000;
  }

  private add(line: HistoryLine): void {
    if (this.lines.length >= HISTORY_LINES_MAX) {
      throw new Error(`the history reached ${HISTORY_LINES_MAX} lines: run shorter or at a lower --rate`);
    }
    this.lines.push(line);
    if (this.path === undefined) return;
    const text = JSON.stringify(line) + "\n";
    this.buffer.push(text);
    this.bufferBytes += text.length;
    if (this.bufferBytes >= HISTORY_BUFFER_BYTES_MAX) this.flush();
  }

  flush(): void {
    if (this.path === undefined || this.buffer.length === 0) return;
    appendFileSync(this.path, this.buffer.join(""));
    this.buffer = [];
    this.bufferBytes = 0;
  }

  close(): void {
    if (this.timer !== undefined) clearInterval(this.timer);
    this.flush();
  }

  invoke(process: number, node: number, gen: number, f: OpKind, value: InvokeLine["value"]): number {
    const id = this.nextOp++;
    this.add({ type: "invoke", id, process, node, gen, f, time: this.now(), value });
    return id;
  }

  complete(id: number, process: number, node: number, f: OpKind, type: Outcome, outcome: { result?: CompleteLine["result"]; error?: OpError }): void {
    this.add({ type, id, process, node, f, time: this.now(), ...outcome });
  }

  sub(sub: number, tenant: string, node: number, events: SubEventTuple[]): void {
    this.add({ type: "sub", sub, tenant, node, time: this.now(), events });
  }

  subStart(sub: number, tenant: string, node: number, from: number): void {
    this.add({ type: "sub-start", sub, tenant, node, time: this.now(), from });
  }

  subError(sub: number, node: number, message: string): void {
    this.add({ type: "sub-error", sub, node, time: this.now(), message });
  }

  /** Records the start of a fault; returns its id for `faultEnd`. */
  faultStart(f: string, detail: Record<string, unknown>): number {
    const fault = this.nextFault++;
    this.add({ type: "nemesis", fault, f, phase: "start", time: this.now(), detail });
    return fault;
  }

  faultEnd(fault: number, f: string, detail: Record<string, unknown> = {}): void {
    this.add({ type: "nemesis", fault, f, phase: "end", time: this.now(), detail });
  }

  node(node: number, event: string, detail?: Record<string, unknown>): void {
    this.add({ type: "node", node, time: this.now(), event, ...(detail === undefined ? {} : { detail }) });
  }
}
