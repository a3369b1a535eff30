/**
 * Reads a V8 .cpuprofile (as written by `node --cpu-prof`) and lists where the samples fell: self
 * time by area (a src/ directory, an npm package, Node's internals, GC, idle), by file and by
 * function, as shares of all samples. Used by `npm run bench -- cluster --cpu-prof-dir D`.
 */

import { readFileSync } from "node:fs";
import { basename } from "node:path";

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}

interface CpuProfile {
  nodes: ProfileNode[];
  samples: number[];
  startTime: number;
  endTime: number;
}

/** Rows printed per list. */
const ROWS_MAX = 15;

/** The area a frame's code belongs to: src/<dir>, an npm package, node internals, or a V8 pseudo-frame. */
export function areaOf(url: string, functionName: string): string {
  if (url === "") return functionName.startsWith("(") ? functionName : "(native)";
  if (url.startsWith("node:")) return "node internals";
  const pkg = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url);
  if (pkg !== null) return `npm ${pkg[1]}`;
  const src = /\/dist\/(src\/[^/]+)\//.exec(url);
  if (src !== null) return src[1]!;
  return url;
}

function fileOf(url: string): string {
  const inSrc = /\/dist\/(src\/.+)$/.exec(url);
  if (inSrc !== null) return inSrc[1]!;
  const inPkg = /node_modules\/(.+)$/.exec(url);
  if (inPkg !== null) return inPkg[1]!;
  return url === "" ? "(none)" : url.replace(/^file:\/\//, "");
}

function top(counts: Map<string, number>, total: number, title: string): string[] {
  const rows = [...counts.entries()].sort((a, b) => b[1] - a[1]).slice(0, ROWS_MAX);
  return [title, ...rows.map(([k, n]) => `  ${((100 * n) / total).toFixed(1).padStart(5)}%  ${k}`)];
}

/**
 * Inclusive time of the functions under dist/src: each sample counts once for every distinct such
 * function on its stack, so a caller's share covers what it called (SQLite, protobuf, syscalls).
 */
function inclusiveSrc(profile: CpuProfile, hits: ReadonlyMap<number, number>): Map<string, number> {
  const parent = new Map<number, number>();
  for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const out = new Map<string, number>();
  for (const [leaf, n] of hits) {
    const seen = new Set<string>();
    // Bounded by the depth of the call tree: every step moves to a parent, and the root has none.
    for (let id: number | undefined = leaf; id !== undefined; id = parent.get(id)) {
      const f = byId.get(id)!.callFrame;
      if (!/\/dist\/src\//.test(f.url)) continue;
      const key = `${f.functionName || "(anonymous)"} ${fileOf(f.url)}:${f.lineNumber + 1}`;
      if (seen.has(key)) continue;
      seen.add(key);
      out.set(key, (out.get(key) ?? 0) + n);
    }
  }
  return out;
}

/** The report for one profile file. */
export function summarizeCpuProfile(file: string): string {
  const profile = JSON.parse(readFileSync(file, "utf8")) as CpuProfile;
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const hits = new Map<number, number>();
  for (const id of profile.samples) hits.set(id, (hits.get(id) ?? 0) + 1);
  const total = profile.samples.length;
  const areas = new Map<string, number>();
  const files = new Map<string, number>();
  const functions = new Map<string, number>();
  const add = (m: Map<string, number>, k: string, n: number): void => void m.set(k, (m.get(k) ?? 0) + n);
  for (const [id, n] of hits) {
    const f = byId.get(id)!.callFrame;
    add(areas, areaOf(f.url, f.functionName), n);
    add(files, fileOf(f.url), n);
    add(functions, `${f.functionName || "(anonymous)"} ${fileOf(f.url)}:${f.lineNumber + 1}`, n);
  }
  const inclusive = inclusiveSrc(profile, hits);
  const idle = (areas.get("(idle)") ?? 0) / Math.max(1, total);
  const seconds = (profile.endTime - profile.startTime) / 1e6;
  return [
    `CPU profile ${basename(file)}: ${total} samples over ${seconds.toFixed(1)} s, ${(100 * (1 - idle)).toFixed(1)}% busy (self time)`,
    ...top(areas, total, " by area:"),
    ...top(files, total, " by file:"),
    ...top(functions, total, " by function:"),
    ...top(inclusive, total, " VerityDB functions, inclusive (self plus everything they called):"),
    "",
  ].join("\n");
}
