/**
 * report.html: one self-contained page (inline SVG, no scripts) to look at a run: the verdict,
 * throughput and latency over time with the nemesis intervals shaded and node events marked, the
 * faults, and the anomalies with their explanations.
 */

import { writeFileSync } from "node:fs";
import { ANOMALIES_SHOWN_MAX, REPORT_BUCKET_MS } from "./constants.js";
import { ANOMALY_KEYS, pairOperations, type CheckResult, type Op } from "./checker.js";
import type { HistoryLine, NemesisLine, NodeLine } from "./history.js";
import type { RunOptions, RunSummary } from "./run.js";

/** Latency points drawn at most (a sample beyond that keeps the page light). */
const LATENCY_POINTS_MAX = 20_000;
/** Faults listed in the table at most. */
const FAULT_ROWS_MAX = 500;
const WIDTH = 1100;
const CHART_HEIGHT = 220;
const MARGIN = { left: 60, right: 20, top: 20, bottom: 30 };

const NEMESIS_COLOURS: Record<string, string> = {
  kill: "#e45756", pause: "#f58518", partition: "#4c78a8", "lose-unsynced": "#b279a2", corrupt: "#9d755d", membership: "#54a24b",
};
const OUTCOME_COLOURS = { ok: "#2ca02c", fail: "#d62728", info: "#ff7f0e" } as const;

/** The largest of many numbers (spreading a long array into Math.max overflows the stack). */
const maxOf = (values: Iterable<number>, floor: number): number => {
  let m = floor;
  for (const v of values) if (v > m) m = v;
  return m;
};

const esc = (s: unknown): string => String(s).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");

interface Interval {
  f: string;
  start: number;
  end: number;
  detail: Record<string, unknown>;
}

function intervals(lines: readonly HistoryLine[], endTime: number): Interval[] {
  const open = new Map<number, NemesisLine>();
  const out: Interval[] = [];
  for (const l of lines) {
    if (l.type !== "nemesis") continue;
    if (l.phase === "start") open.set(l.fault, l);
    else {
      const s = open.get(l.fault);
      open.delete(l.fault);
      out.push({ f: l.f, start: s?.time ?? l.time, end: l.time, detail: { ...(s?.detail ?? {}), ...l.detail } });
    }
  }
  for (const s of open.values()) out.push({ f: s.f, start: s.time, end: endTime, detail: s.detail });
  return out.sort((a, b) => a.start - b.start);
}

class Chart {
  readonly parts: string[] = [];
  constructor(
    readonly title: string,
    readonly tMax: number,
    readonly yMax: number,
    readonly yLabel: string,
    readonly logY = false,
  ) {}

  x(t: number): number {
    return MARGIN.left + (t / Math.max(1, this.tMax)) * (WIDTH - MARGIN.left - MARGIN.right);
  }

  y(v: number): number {
    const h = CHART_HEIGHT - MARGIN.top - MARGIN.bottom;
    const frac = this.logY ? Math.log10(Math.max(1, v)) / Math.log10(Math.max(10, this.yMax)) : v / Math.max(1, this.yMax);
    return MARGIN.top + h - Math.min(1, frac) * h;
  }

  shade(ivs: readonly Interval[]): void {
    ivs.forEach((iv, i) => {
      const x0 = this.x(iv.start);
      const w = Math.max(1, this.x(iv.end) - x0);
      const band = (i % 3) * 6;
      this.parts.push(`<rect x="${x0.toFixed(1)}" y="${MARGIN.top + band}" width="${w.toFixed(1)}" height="${CHART_HEIGHT - MARGIN.top - MARGIN.bottom - band}" fill="${NEMESIS_COLOURS[iv.f] ?? "#999"}" opacity="0.18"><title>${esc(`${iv.f} ${(iv.start / 1000).toFixed(1)}-${(iv.end / 1000).toFixed(1)} s ${JSON.stringify(iv.detail).slice(0, 300)}`)}</title></rect>`);
    });
  }

  marks(events: readonly NodeLine[]): void {
    for (const e of events) {
      const colour = e.event === "exit" ? "#d62728" : e.event === "start" ? "#2ca02c" : "#555";
      const x = this.x(e.time).toFixed(1);
      this.parts.push(`<line x1="${x}" x2="${x}" y1="${CHART_HEIGHT - MARGIN.bottom}" y2="${CHART_HEIGHT - MARGIN.bottom + 6}" stroke="${colour}"><title>${esc(`node ${e.node} ${e.event} at ${(e.time / 1000).toFixed(1)} s`)}</title></line>`);
    }
  }

  axes(): void {
    const bottom = CHART_HEIGHT - MARGIN.bottom;
    this.parts.push(`<line x1="${MARGIN.left}" x2="${WIDTH - MARGIN.right}" y1="${bottom}" y2="${bottom}" stroke="#333"/>`);
    this.parts.push(`<line x1="${MARGIN.left}" x2="${MARGIN.left}" y1="${MARGIN.top}" y2="${bottom}" stroke="#333"/>`);
    const seconds = this.tMax / 1000;
    const step = Math.max(1, Math.ceil(seconds / 12 / 5) * 5);
    for (let s = 0; s <= seconds; s += step) {
      this.parts.push(`<text x="${this.x(s * 1000).toFixed(1)}" y="${bottom + 18}" font-size="10" text-anchor="middle">${s}s</text>`);
    }
    const ticks = this.logY ? [1, 10, 100, 1000, 10000, 100000].filter((v) => v <= this.yMax * 10) : [0, 0.25, 0.5, 0.75, 1].map((f) => Math.round(f * this.yMax));
    for (const v of ticks) this.parts.push(`<text x="${MARGIN.left - 6}" y="${(this.y(v) + 3).toFixed(1)}" font-size="10" text-anchor="end">${v}</text>`);
    this.parts.push(`<text x="12" y="${MARGIN.top + 80}" font-size="11" transform="rotate(-90 12 ${MARGIN.top + 80})">${esc(this.yLabel)}</text>`);
  }

  svg(): string {
    return `<h2>${esc(this.title)}</h2><svg width="${WIDTH}" height="${CHART_HEIGHT}" xmlns="http://www.w3.org/2000/svg">${this.parts.join("")}</svg>`;
  }
}

function throughputChart(ops: readonly Op[], ivs: readonly Interval[], nodes: readonly NodeLine[], tMax: number): string {
  const buckets = Math.max(1, Math.ceil(tMax / REPORT_BUCKET_MS));
  const series: Record<string, number[]> = {};
  for (const kind of ["append ok", "append fail", "append info", "read ok", "read fail"]) series[kind] = new Array<number>(buckets).fill(0);
  for (const op of ops) {
    if (!Number.isFinite(op.complete)) continue;
    const name = `${op.f === "append" ? "append" : "read"} ${op.type}`;
    const s = series[name];
    if (s === undefined) continue;
    const b = Math.min(buckets - 1, Math.floor(op.complete / REPORT_BUCKET_MS));
    s[b]!++;
  }
  const perSecond = 1000 / REPORT_BUCKET_MS;
  const yMax = maxOf(Object.values(series).flat().map((v) => v * perSecond), 1);
  const chart = new Chart("Throughput (operations completed per second)", tMax, yMax, "ops/s");
  chart.shade(ivs);
  const colours: Record<string, string> = { "append ok": "#2ca02c", "append fail": "#d62728", "append info": "#ff7f0e", "read ok": "#1f77b4", "read fail": "#9467bd" };
  for (const [name, values] of Object.entries(series)) {
    const points = values.map((v, i) => `${chart.x((i + 0.5) * REPORT_BUCKET_MS).toFixed(1)},${chart.y(v * perSecond).toFixed(1)}`).join(" ");
    chart.parts.push(`<polyline fill="none" stroke="${colours[name]}" stroke-width="1.5" points="${points}"><title>${esc(name)}</title></polyline>`);
  }
  chart.marks(nodes);
  chart.axes();
  const legend = Object.keys(series).map((n) => `<span style="color:${colours[n]}">&#9632; ${esc(n)}</span>`).join(" &nbsp; ");
  return chart.svg() + `<div class="legend">${legend} (reads include queries and projection status)</div>`;
}

function latencyChart(ops: readonly Op[], ivs: readonly Interval[], nodes: readonly NodeLine[], tMax: number): string {
  const done = ops.filter((o) => Number.isFinite(o.complete));
  const stride = Math.max(1, Math.ceil(done.length / LATENCY_POINTS_MAX));
  const yMax = maxOf(done.map((o) => o.complete - o.invoke), 10);
  const chart = new Chart("Latency (ms, log scale; each dot one operation at its start)", tMax, yMax, "latency ms", true);
  chart.shade(ivs);
  for (let i = 0; i < done.length; i += stride) {
    const o = done[i]!;
    const shape = o.f === "append" ? "" : ` opacity="0.5"`;
    chart.parts.push(`<circle cx="${chart.x(o.invoke).toFixed(1)}" cy="${chart.y(o.complete - o.invoke).toFixed(1)}" r="1.6" fill="${OUTCOME_COLOURS[o.type]}"${shape}/>`);
  }
  chart.marks(nodes);
  chart.axes();
  return chart.svg() + `<div class="legend"><span style="color:${OUTCOME_COLOURS.ok}">&#9679; ok</span> &nbsp; <span style="color:${OUTCOME_COLOURS.fail}">&#9679; fail</span> &nbsp; <span style="color:${OUTCOME_COLOURS.info}">&#9679; info</span> &nbsp; (faded: reads)${stride > 1 ? `; one in ${stride} operations drawn` : ""}</div>`;
}

function faultTable(ivs: readonly Interval[]): string {
  const rows = ivs.slice(0, FAULT_ROWS_MAX).map((iv) => `<tr><td><span style="color:${NEMESIS_COLOURS[iv.f] ?? "#999"}">&#9632;</span> ${esc(iv.f)}</td><td>${(iv.start / 1000).toFixed(1)}</td><td>${(iv.end / 1000).toFixed(1)}</td><td><code>${esc(JSON.stringify(iv.detail).slice(0, 400))}</code></td></tr>`);
  return `<h2>Faults (${ivs.length})</h2><table><tr><th>nemesis</th><th>start s</th><th>end s</th><th>detail</th></tr>${rows.join("")}</table>${ivs.length > FAULT_ROWS_MAX ? `<p>${ivs.length - FAULT_ROWS_MAX} more in history.jsonl</p>` : ""}`;
}

function anomalyList(result: CheckResult): string {
  const sections = ANOMALY_KEYS.map((k) => {
    const list = result.anomalies[k];
    const count = result.counts[k];
    if (count === 0) return `<li><b>${k}</b>: none</li>`;
    const items = list.slice(0, ANOMALIES_SHOWN_MAX).map((a) => `<li><i>${esc(a.kind)}</i>: ${esc(a.explanation)}</li>`).join("");
    return `<li class="bad"><b>${k}</b>: ${count}<ul>${items}</ul>${count > ANOMALIES_SHOWN_MAX ? `<p>... all of them in checker.json</p>` : ""}</li>`;
  });
  return `<h2>Anomalies</h2><ul>${sections.join("")}</ul>`;
}

export function writeReport(path: string, lines: readonly HistoryLine[], result: CheckResult, summary: RunSummary, options: RunOptions): void {
  const ops = pairOperations(lines);
  const tMax = maxOf(lines.map((l) => l.time), 1);
  const ivs = intervals(lines, tMax);
  const nodes = lines.filter((l): l is NodeLine => l.type === "node" && (l.event === "start" || l.event === "exit"));
  const verdict = summary.valid ? `<span class="ok">VALID</span>` : `<span class="bad">INVALID</span>`;
  const byKind = Object.entries(result.stats.byKind).map(([k, v]) => `<tr><td>${esc(k)}</td><td>${v.ok}</td><td>${v.fail}</td><td>${v.info}</td></tr>`).join("");
  const nemesis = Object.entries(summary.nemesis).map(([k, v]) => `<span style="color:${NEMESIS_COLOURS[k] ?? "#999"}">&#9632;</span> ${esc(k)}: ${v}`).join(" &nbsp; ");
  const html = `<!doctype html><html><head><meta charset="utf-8"><title>jepsen-lite ${summary.valid ? "valid" : "INVALID"} seed ${summary.seed}</title>
<style>body{font-family:sans-serif;margin:20px;max-width:${WIDTH + 40}px} .ok{color:#2ca02c} .bad{color:#d62728} table{border-collapse:collapse;font-size:12px} td,th{border:1px solid #ccc;padding:2px 6px;text-align:left} code{font-size:11px} .legend{font-size:12px;margin-bottom:12px}</style></head><body>
<h1>jepsen-lite: ${verdict}</h1>
<p>${options.nodes} nodes (${esc(summary.network)}), nemesis <b>${esc(options.nemeses.join(",") || "none")}</b>, ${options.timeLimitS} s at ${options.rate} ops/s, seed ${summary.seed}.
${result.ops} operations: ${result.ok} ok, ${result.fail} fail, ${result.info} info. ${result.stats.finalEvents} events in the final log across ${result.stats.streams} streams; ${result.stats.subscriptionEvents} delivered to subscriptions.</p>
<p>Faults injected: ${nemesis}</p>
<table><tr><th>operation</th><th>ok</th><th>fail</th><th>info</th></tr>${byKind}</table>
${anomalyList(result)}
${throughputChart(ops, ivs, nodes, tMax)}
${latencyChart(ops, ivs, nodes, tMax)}
<p class="legend">Shaded: nemesis intervals (hover for details). Ticks under the axis: node starts (green) and exits (red).</p>
${faultTable(ivs)}
<p>Files: history.jsonl (every operation, delivery and fault), final.json (final reads), checker.json (every anomaly), nodes/node&lt;N&gt;.log.</p>
</body></html>`;
  writeFileSync(path, html);
}
