/**
 * How the tenant, schema and projection commands print for people: tables aligned for a terminal
 * (text columns left-aligned, number columns right-aligned, two spaces between columns).
 */

import { formatBytes } from "./common.js";
import type { ProjectionInfo, ProjectionStatusResponse, SchemaInfo, TenantInfo } from "./admin-tenant-api.js";

/** A table column: its heading, and whether its values are numbers (right-aligned). */
export interface Column {
  heading: string;
  numeric?: boolean;
}

/** The rows under their headings, each column as wide as its widest cell, every line indented by `indent`. */
export function formatTable(columns: readonly Column[], rows: readonly (readonly string[])[], indent = "  "): string[] {
  const widths = columns.map((c, i) => Math.max(c.heading.length, ...rows.map((r) => (r[i] ?? "").length)));
  const line = (cells: readonly string[]): string =>
    (indent + columns.map((c, i) => (c.numeric === true ? (cells[i] ?? "").padStart(widths[i]!) : (cells[i] ?? "").padEnd(widths[i]!))).join("  ")).trimEnd();
  return [line(columns.map((c) => c.heading)), ...rows.map(line)];
}

/** Label and value pairs, the values aligned. */
export function formatPairs(pairs: readonly (readonly [string, string])[], indent = "  "): string[] {
  const width = Math.max(...pairs.map(([label]) => label.length));
  return pairs.map(([label, value]) => `${indent}${label.padEnd(width)}  ${value}`);
}

export function printLines(lines: readonly string[]): void {
  process.stdout.write(lines.join("\n") + "\n");
}

export function tenantLines(tenants: readonly TenantInfo[]): string[] {
  if (tenants.length === 0) return ["no tenants: create one with verity-admin tenant create --tenant T"];
  return formatTable(
    [{ heading: "tenant" }, { heading: "streams", numeric: true }, { heading: "events", numeric: true }, { heading: "bytes", numeric: true },
      { heading: "projections" }, { heading: "applied position", numeric: true }],
    tenants.map((t) => [t.tenant, String(t.streams), String(t.events), formatBytes(t.bytes), t.projections.join(",") || "-", String(t.appliedPosition)]),
    "",
  );
}

export function tenantShowLines(t: TenantInfo): string[] {
  return [
    `tenant ${t.tenant}`,
    ...formatPairs([
      ["created at position", String(t.createdAt)],
      ["streams", String(t.streams)],
      ["events", String(t.events)],
      ["bytes", `${formatBytes(t.bytes)} (${t.bytes})`],
      ["projections", t.projections.join(", ") || "none"],
      ["applied position", `${t.appliedPosition} (on the answering node)`],
    ]),
  ];
}

export function schemaLines(s: SchemaInfo): string[] {
  const out = [`tenant ${s.tenant}: ${s.tables.length} ${s.tables.length === 1 ? "table" : "tables"}, applied position ${s.appliedPosition} (on the answering node)`];
  if (s.tables.length === 0) out.push("  no tables yet: create them with verity-admin migrate --tenant T --migration-file F.sql");
  for (const t of s.tables) {
    out.push("", `table ${t.name}: ${t.rows} ${t.rows === 1 ? "row" : "rows"}`);
    out.push(...formatTable([{ heading: "column" }, { heading: "type" }, { heading: "not null" }, { heading: "pk" }],
      t.columns.map((c) => [c.name, c.type || "-", c.notNull ? "NOT NULL" : "", c.primaryKey ? "PK" : ""])));
  }
  out.push("", s.migrations.length === 0 ? "migrations: none applied" : "migrations:");
  if (s.migrations.length > 0) {
    out.push(...formatTable([{ heading: "position", numeric: true }, { heading: "name" }, { heading: "outcome" }],
      s.migrations.map((m) => [String(m.position), m.name || "-", m.outcome])));
  }
  return out;
}

function stateOf(p: ProjectionInfo): string {
  return p.state === "failed" ? "FAILED" : p.state;
}

/** Each projection with its state, positions and event types; a failed one's error and the fix; this node's positions and digest. */
export function projectionStatusLines(r: ProjectionStatusResponse, endpoint: string): string[] {
  const out = [`tenant ${r.tenant} on ${endpoint}: applied position ${r.appliedPosition}, commit index ${r.commitIndex}`, `  digest ${r.digest}`];
  if (r.projections.length === 0) {
    out.push("no projections: create one with verity-admin projection create --tenant T --file F.toml");
    return out;
  }
  out.push(...formatTable(
    [{ heading: "projection" }, { heading: "state" }, { heading: "applied position", numeric: true }, { heading: "lag", numeric: true }, { heading: "handles" }],
    r.projections.map((p) => [p.name, stateOf(p), String(p.appliedPosition), String(p.lag), p.eventTypes.join(", ")]),
    "",
  ));
  for (const p of r.projections.filter((q) => q.state === "failed")) {
    out.push(
      `projection ${p.name} FAILED at position ${p.errorPosition}: ${p.error}`,
      `  it applies nothing until rebuilt: fix the cause (a migration, or the handler), then run verity-admin projection rebuild --tenant ${r.tenant} --projection ${p.name}`,
    );
  }
  return out;
}
