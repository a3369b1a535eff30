/**
 * The cluster benchmark's arithmetic (bench/bench-stats.ts): nearest-rank percentiles, the phase
 * summary, and the verdicts against the targets, including the case without etcd figures; and the
 * pure parts of its diagnostics (metrics deltas, profile areas).
 */
import { describe, expect, it } from "vitest";
import { compare, percentile, summarize, verdict, TARGETS, type PhaseSummary } from "../../bench/bench-stats.js";
import { areaOf } from "../../bench/cpu-profile-summary.js";
import { parseMetrics, pipelineBetween } from "../../bench/leader-pipeline.js";

const phase = (events_per_s: number, p99_ms: number): PhaseSummary => ({
  events_per_s, ops_per_s: events_per_s, p50_ms: p99_ms / 2, p99_ms, ops: events_per_s, events: events_per_s, errors: 0, seconds: 1,
});

describe("percentile", () => {
  const hundred = Float64Array.from({ length: 100 }, (_, i) => i + 1);

  it("takes the nearest rank", () => {
    expect(percentile(hundred, 0.5)).toBe(50);
    expect(percentile(hundred, 0.99)).toBe(99);
    expect(percentile(hundred, 1)).toBe(100);
    expect(percentile(hundred, 0)).toBe(1);
    expect(percentile([7], 0.99)).toBe(7);
    expect(percentile([1, 2, 3], 0.5)).toBe(2);
  });

  it("is 0 for no values and refuses p outside [0, 1]", () => {
    expect(percentile([], 0.5)).toBe(0);
    expect(() => percentile(hundred, 1.5)).toThrow(RangeError);
    expect(() => percentile(hundred, Number.NaN)).toThrow(RangeError);
  });
});

describe("summarize", () => {
  it("sorts, counts events per call and divides by the elapsed time", () => {
    const s = summarize([4, 1, 3, 2], 100, 1, 2);
    expect(s).toEqual({ events_per_s: 200, ops_per_s: 2, p50_ms: 2, p99_ms: 4, ops: 4, events: 400, errors: 1, seconds: 2 });
  });

  it("refuses a phase of no time", () => {
    expect(() => summarize([1], 1, 0, 0)).toThrow(RangeError);
  });
});

describe("compare", () => {
  it("meets the targets at 3x etcd's rate, an equal p99 and 150,000 batched events/s", () => {
    const c = compare(phase(30_000, 10), phase(TARGETS.batch100_events_per_s_min, 50), phase(10_000, 10));
    expect(c).toEqual({ ratio_vs_etcd: 3, p99_ratio_vs_etcd: 1, met: { ratio_vs_etcd: true, p99_vs_etcd: true, batch100_events_per_s: true } });
  });

  it("misses them just below", () => {
    const c = compare(phase(29_999, 10.1), phase(149_999, 50), phase(10_000, 10));
    expect(c.met).toEqual({ ratio_vs_etcd: false, p99_vs_etcd: false, batch100_events_per_s: false });
  });

  it("has null ratios and verdicts without etcd", () => {
    const c = compare(phase(1, 1), phase(1, 1), null);
    expect(c.ratio_vs_etcd).toBeNull();
    expect(c.p99_ratio_vs_etcd).toBeNull();
    expect(c.met.ratio_vs_etcd).toBeNull();
    expect(verdict(c.met.ratio_vs_etcd)).toBe("n/a");
    expect(verdict(true)).toBe("met");
    expect(verdict(false)).toBe("NOT met");
  });
});

describe("areaOf", () => {
  it("names the src directory, the npm package or the V8 pseudo-frame", () => {
    expect(areaOf("file:///w/dist/src/log/segmented-log.js", "append")).toBe("src/log");
    expect(areaOf("file:///w/node_modules/@grpc/grpc-js/build/src/server.js", "f")).toBe("npm @grpc/grpc-js");
    expect(areaOf("file:///w/node_modules/protobufjs/src/writer.js", "f")).toBe("npm protobufjs");
    expect(areaOf("node:internal/http2/core", "f")).toBe("node internals");
    expect(areaOf("", "(garbage collector)")).toBe("(garbage collector)");
    expect(areaOf("", "writeBuffer")).toBe("(native)");
  });
});

describe("leader pipeline", () => {
  const before = parseMetrics([
    "# HELP verity_log_entries_total Log entries",
    "verity_log_entries_total 100",
    "verity_log_append_duration_seconds_sum 0.5",
    "verity_log_append_duration_seconds_count 10",
    'verity_consensus_duration_seconds_sum{phase="persist"} 1',
    'verity_consensus_duration_seconds_count{phase="persist"} 20',
    'verity_consensus_duration_seconds_bucket{phase="persist",le="0.001"} 3',
    'verity_consensus_duration_seconds_sum{phase="apply"} 0.5',
    'verity_consensus_duration_seconds_count{phase="apply"} 10',
    'verity_write_duration_seconds_sum{status="OK"} 2',
    'verity_write_duration_seconds_count{status="OK"} 100',
  ].join("\n"));

  it("reads only the series it needs, labels included", () => {
    expect(before.verity_log_entries_total).toBe(100);
    expect(before['verity_consensus_duration_seconds_count{phase="persist"}']).toBe(20);
    expect(Object.keys(before)).toHaveLength(9);
  });

  it("turns two scrapes into rates and means", () => {
    const after = {
      ...before,
      verity_log_entries_total: 1100,
      verity_log_append_duration_seconds_sum: 2.5,
      verity_log_append_duration_seconds_count: 110,
      'verity_consensus_duration_seconds_sum{phase="persist"}': 2,
      'verity_consensus_duration_seconds_count{phase="persist"}': 220,
      'verity_consensus_duration_seconds_sum{phase="apply"}': 1.5,
      'verity_consensus_duration_seconds_count{phase="apply"}': 110,
      'verity_write_duration_seconds_sum{status="OK"}': 12,
      'verity_write_duration_seconds_count{status="OK"}': 1100,
    };
    expect(pipelineBetween(before, after, 10)).toEqual({
      log_writes_per_s: 10, entries_per_log_write: 10, log_write_ms: 20, persist_per_s: 20, persist_ms: 5,
      apply_per_s: 10, apply_ms: 10, loop_busy_pct: 20, server_append_ms: 10,
    });
  });

  it("gives null where a series is missing", () => {
    const p = pipelineBetween({}, {}, 10);
    expect(p.log_writes_per_s).toBeNull();
    expect(p.loop_busy_pct).toBeNull();
  });
});
