/**
 * OpenTelemetry spans from a real verity-server process, received by a small OTLP/HTTP collector of
 * ours on loopback: a write gives verity.write with verity.consensus.prepare and
 * verity.consensus.commit inside it, and a read gives verity.query.
 */
import { spawn } from "node:child_process";
import * as http from "node:http";
import { gunzipSync } from "node:zlib";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { tempDir } from "../helpers/log-fixtures.js";
import { exited, freePort, until } from "../helpers/process-cluster.js";
import { VerityClient } from "../../src/client/verity-client.js";
import { AdminApi } from "../../src/client/admin-client.js";

const root = join(import.meta.dirname, "..", "..");
const tmp = tempDir("tracing");
const stops: (() => void)[] = [];
afterAll(() => {
  for (const stop of stops) stop();
  tmp.cleanup();
});

interface OtlpSpan { name: string; traceId: string; spanId: string; parentSpanId?: string }

describe("tracing", () => {
  it("exports verity.write, verity.consensus.prepare/commit and verity.query over OTLP/HTTP", async () => {
    const spans: OtlpSpan[] = [];
    const paths: string[] = [];
    const collector = http.createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on("data", (c: Buffer) => chunks.push(c));
      req.on("end", () => {
        paths.push(req.url ?? "");
        let body = Buffer.concat(chunks);
        if (req.headers["content-encoding"] === "gzip") body = gunzipSync(body);
        const o = JSON.parse(body.toString()) as { resourceSpans: { scopeSpans: { spans: OtlpSpan[] }[] }[] };
        for (const rs of o.resourceSpans) for (const ss of rs.scopeSpans) spans.push(...ss.spans);
        res.writeHead(200, { "content-type": "application/json" }).end("{}");
      });
    });
    await new Promise<void>((r) => collector.listen(0, "127.0.0.1", r));
    stops.push(() => collector.close());
    const port = (collector.address() as { port: number }).port;

    const client = await freePort();
    const child = spawn(process.execPath, [join(root, "bin", "verity-server.js"), "--data-dir", join(tmp.path, "data"), "--bind", `127.0.0.1:${client}`,
      "--cluster-address", `127.0.0.1:${await freePort()}`, "--metrics-address", `127.0.0.1:${await freePort()}`], {
      stdio: ["ignore", "pipe", "pipe"],
      env: { ...process.env, VERITY_TELEMETRY_TRACING_ENABLED: "true", VERITY_TELEMETRY_TRACING_ENDPOINT: `http://127.0.0.1:${port}` },
    });
    let output = "";
    child.stdout.on("data", (d: Buffer) => (output += d.toString()));
    child.stderr.on("data", (d: Buffer) => (output += d.toString()));
    stops.push(() => child.kill("SIGKILL"));

    const admin = new AdminApi({ endpoints: [`127.0.0.1:${client}`], tls: undefined });
    await until("the tenant created", async () => admin.call("createTenant", { tenant: "acme" }).then(() => true, () => undefined));
    const c = new VerityClient({ endpoints: [`127.0.0.1:${client}`], attempts: 40 });
    await c.append({ tenant: "acme", stream: "traced", events: [{ type: "Hello", data: {} }] });
    await c.read({ tenant: "acme", stream: "traced" });
    c.close();
    await until("the spans at the collector", async () => {
      const names = new Set(spans.map((s) => s.name));
      return ["verity.write", "verity.consensus.prepare", "verity.consensus.commit", "verity.query"].every((n) => names.has(n)) ? true : undefined;
    }, 15_000);
    expect(output).toMatch(/exporting OpenTelemetry spans/);
    expect(paths.every((p) => p === "/v1/traces")).toBe(true);
    const write = spans.find((s) => s.name === "verity.write")!;
    for (const inner of ["verity.consensus.prepare", "verity.consensus.commit"]) {
      const span = spans.find((s) => s.name === inner)!;
      expect(span.traceId).toBe(write.traceId);
      expect(span.parentSpanId).toBe(write.spanId);
    }
    child.kill("SIGTERM");
    expect(await exited(child)).toBe(0);
  });
});
