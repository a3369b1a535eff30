/**
 * The parts of `verity-admin doctor` and `diagnostics export` that judge what they find, without a
 * cluster: clock offsets read from the Date header of fake nodes whose clocks are set off on purpose,
 * the skew verdict, certificate expiry / key / issuer checks on openssl-made certificates at chosen
 * times, and the redaction of secrets from configs, environments and log lines.
 */
import { execFileSync } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import * as http from "node:http";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { X509Certificate } from "node:crypto";
import { afterAll, describe, expect, it } from "vitest";

import { CERT_EXPIRY_WARN_DAYS, checkCertificate } from "../../src/cli/cert-check.js";
import { CLOCK_SKEW_FAIL_MS, CLOCK_SKEW_WARN_MS, boundsOf, certainSkewMs, difference, intersect, judgeClocks, measureOffset, nextSendMs } from "../../src/cli/clock-skew.js";
import { REDACTED, redactLogLine, redactTree, redactedEnvironment } from "../../src/cli/redact.js";
import { tempDir } from "../helpers/log-fixtures.js";

const tmp = tempDir("doctor-checks");
const servers: http.Server[] = [];
afterAll(async () => {
  await Promise.all(servers.map((s) => new Promise((r) => s.close(r))));
  tmp.cleanup();
});

/** A fake node whose /status answers with a Date header `offsetMs` off this machine's clock (or none). */
async function fakeNode(offsetMs: number | undefined): Promise<string> {
  const server = http.createServer((_req, res) => {
    if (offsetMs === undefined) res.sendDate = false;
    else res.setHeader("Date", new Date(Date.now() + offsetMs).toUTCString());
    res.end("{}");
  });
  servers.push(server);
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return `127.0.0.1:${(server.address() as AddressInfo).port}`;
}

describe("clock offsets from Date headers", () => {
  it("bounds one answer to about a second, and narrows with answers timed at second boundaries", () => {
    const b = boundsOf({ sentMs: 10_400, receivedMs: 10_410, dateMs: 15_000 });
    expect(b.lowMs).toBe(4_590);
    expect(b.highMs).toBeGreaterThanOrEqual(5_600);
    expect(intersect(b, { lowMs: 5_000, highMs: 9_000 })).toEqual({ lowMs: 5_000, highMs: b.highMs });
    expect(intersect({ lowMs: 0, highMs: 1 }, { lowMs: 2, highMs: 3 })).toBeUndefined();
    // The next request is sent so that it reaches the node at a second boundary by the estimate.
    const send = nextSendMs({ lowMs: 200, highMs: 600 }, 5, 1_000_000);
    expect((send + 5 + 400) % 1000).toBe(0);
    expect(send).toBeGreaterThan(1_000_000);
    expect(certainSkewMs(difference({ lowMs: 4_900, highMs: 5_100 }, { lowMs: -100, highMs: 100 }))).toBe(4_800);
    expect(certainSkewMs({ lowMs: -50, highMs: 80 })).toBe(0);
  });

  it("measures fake nodes set 5 s ahead and 2.3 s behind to within a tenth of a second or so", async () => {
    for (const offset of [5_000, -2_300, 0]) {
      const m = await measureOffset(await fakeNode(offset), undefined);
      expect(m.ok).toBe(true);
      if (!m.ok) continue;
      expect(m.bounds.lowMs).toBeLessThanOrEqual(offset + 5);
      expect(m.bounds.highMs).toBeGreaterThanOrEqual(offset - 5);
      expect(m.bounds.highMs - m.bounds.lowMs).toBeLessThan(250);
    }
  }, 30_000);

  it("says why when a node cannot be measured", async () => {
    const none = await measureOffset(await fakeNode(undefined), undefined);
    expect(none).toMatchObject({ ok: false, reason: expect.stringMatching(/no usable Date header/) });
    const refused = await measureOffset("127.0.0.1:1", undefined);
    expect(refused).toEqual({ ok: false, reason: "ECONNREFUSED" });
  });

  it("judges skew: PASS when clocks agree, WARN past a second, FAIL past a minute, naming the clocks", () => {
    const at = (ms: number) => ({ ok: true as const, bounds: { lowMs: ms - 50, highMs: ms + 50 }, samples: 4, rttMs: 1 });
    expect(judgeClocks([{ id: 1, endpoint: "a", measurement: at(0) }, { id: 2, endpoint: "b", measurement: at(30) }], []).status).toBe("PASS");
    const warned = judgeClocks([{ id: 1, endpoint: "a", measurement: at(0) }, { id: 2, endpoint: "b", measurement: at(CLOCK_SKEW_WARN_MS + 500) }], [3]);
    expect(warned).toMatchObject({ status: "WARN", found: expect.stringMatching(/node 2 are at least \d+ ms apart/), fix: expect.stringMatching(/timedatectl/) });
    expect(warned.details).toContain("not measured: node 3 (give their client addresses in --endpoints)");
    const failed = judgeClocks([{ id: 1, endpoint: "a", measurement: at(0) }, { id: 2, endpoint: "b", measurement: at(-CLOCK_SKEW_FAIL_MS - 1000) }], []);
    expect(failed.status).toBe("FAIL");
    const unknown = judgeClocks([{ id: 1, endpoint: "a", measurement: { ok: false, reason: "ECONNRESET" } }], []);
    expect(unknown).toMatchObject({ status: "WARN", found: expect.stringMatching(/could not be measured/) });
  });
});

function openssl(args: string[]): void {
  execFileSync("openssl", args, { stdio: ["ignore", "ignore", "pipe"] });
}

/** A CA and certificates it issued, valid for `days` from now. */
function makeCa(name: string): { cert: string; key: string; issue: (cn: string, days: number) => { cert: string; key: string } } {
  const key = join(tmp.path, `${name}.key`);
  const cert = join(tmp.path, `${name}.crt`);
  openssl(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", cert, "-days", "365", "-subj", `/CN=${name}`,
    "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"]);
  let serial = 1;
  return {
    cert, key,
    issue(cn, days) {
      const leafKey = join(tmp.path, `${cn}.key`);
      const csr = join(tmp.path, `${cn}.csr`);
      const leaf = join(tmp.path, `${cn}.crt`);
      openssl(["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", leafKey, "-out", csr, "-subj", `/CN=${cn}`]);
      openssl(["x509", "-req", "-in", csr, "-CA", cert, "-CAkey", key, "-set_serial", String(serial++), "-days", String(days), "-out", leaf]);
      return { cert: leaf, key: leafKey };
    },
  };
}

describe("certificate checks", () => {
  const ca = makeCa("doctor-ca");
  const other = makeCa("other-ca");
  const DAY = 86_400_000;

  it("passes a certificate valid for long, warns within 30 days, fails once expired or not yet valid", () => {
    const long = ca.issue("node-long", 400);
    const now = Date.now();
    const ok = checkCertificate("tls_cert", long.cert, now, { keyPath: long.key, caPath: ca.cert });
    expect(ok).toMatchObject({ name: "tls-cert", status: "PASS", found: expect.stringMatching(/CN=node-long: valid until \d{4}-\d\d-\d\d \(\d+ days\)/) });
    const end = Date.parse(new X509Certificate(readFileSync(long.cert)).validTo);
    const soon = checkCertificate("tls_cert", long.cert, end - 10 * DAY, { keyPath: long.key, caPath: ca.cert });
    expect(soon).toMatchObject({ status: "WARN", found: expect.stringMatching(/expires on .*, in 10 days/), fix: expect.stringMatching(/issue a new certificate/) });
    expect(CERT_EXPIRY_WARN_DAYS).toBe(30);
    const short = ca.issue("node-short", 10);
    // After its issue time (notBefore has one-second precision, and the clock has moved on since `now`).
    expect(checkCertificate("tls_cert", short.cert, Date.now() + 1000).status).toBe("WARN");
    const expired = checkCertificate("tls_cert", long.cert, end + DAY);
    expect(expired).toMatchObject({ status: "FAIL", found: expect.stringMatching(/expired on/), fix: expect.stringMatching(/restart the node/) });
    const early = checkCertificate("tls_cert", long.cert, now - 2 * DAY);
    expect(early).toMatchObject({ status: "FAIL", found: expect.stringMatching(/not valid before/), fix: expect.stringMatching(/clock/) });
    // The CA file: its own dates.
    expect(checkCertificate("tls_ca", ca.cert, now)).toMatchObject({ name: "tls-ca", status: "PASS" });
    expect(checkCertificate("tls_ca", ca.cert, now + 340 * DAY)).toMatchObject({ status: "WARN", fix: expect.stringMatching(/re-issue the node and client certificates/) });
  });

  it("fails a certificate that does not match its key or was issued by another CA, and never shows the key", () => {
    const a = ca.issue("node-a", 400);
    const b = ca.issue("node-b", 400);
    const mismatch = checkCertificate("tls_cert", a.cert, Date.now(), { keyPath: b.key, caPath: ca.cert });
    expect(mismatch).toMatchObject({ status: "FAIL", found: expect.stringMatching(/does not match the key in security\.tls_key/) });
    expect(JSON.stringify(mismatch)).not.toMatch(/PRIVATE KEY/);
    const foreign = other.issue("node-foreign", 400);
    expect(checkCertificate("tls_cert", foreign.cert, Date.now(), { keyPath: foreign.key, caPath: ca.cert })).toMatchObject({
      status: "FAIL", found: expect.stringMatching(/not issued by the CA in security\.tls_ca \(issuer CN=other-ca\)/),
    });
    const notPem = join(tmp.path, "not-a-cert.pem");
    writeFileSync(notPem, "hello");
    expect(checkCertificate("tls_ca", notPem, Date.now())).toMatchObject({ status: "FAIL", found: expect.stringMatching(/no PEM certificate/) });
    expect(checkCertificate("tls_cert", undefined, Date.now())).toMatchObject({ status: "PASS", found: expect.stringMatching(/TLS is off/) });
  });
});

describe("redaction", () => {
  it("replaces values whose names say key, secret, password or token, keeps tls_key paths, and cuts URL credentials", () => {
    const tree = redactTree({
      security: { tls_key: "/etc/verity/server.key", tls_cert: "/etc/verity/server.crt", admins: ["admin"] },
      encryption: { kms_key_id: "arn:aws:kms:us-east-1:123456789:key/abc123", enabled: false },
      telemetry: { tracing_endpoint: "https://user:hunter2@jaeger:14268/api/traces" },
      other: { db_password: "pw", api_token: "t", nested: [{ client_secret: "s" }] },
    }) as Record<string, Record<string, unknown>>;
    expect(tree.security!.tls_key).toBe("/etc/verity/server.key");
    expect(tree.encryption!.kms_key_id).toBe(REDACTED);
    expect(tree.encryption!.enabled).toBe(false);
    expect(tree.telemetry!.tracing_endpoint).toBe(`https://${REDACTED}@jaeger:14268/api/traces`);
    expect(JSON.stringify(tree.other)).not.toMatch(/"pw"|"t"|"s"/);
  });

  it("redacts VERITY_* variables and log lines, JSON or text", () => {
    expect(redactedEnvironment({ VERITY_ENCRYPTION_KMS_KEY_ID: "arn", VERITY_SECURITY_TLS_KEY: "/k", VERITY_NODE_ID: "1", HOME: "/root" }))
      .toEqual({ VERITY_ENCRYPTION_KMS_KEY_ID: REDACTED, VERITY_NODE_ID: "1", VERITY_SECURITY_TLS_KEY: "/k" });
    const json = JSON.parse(redactLogLine(JSON.stringify({ message: "data directory open", fields: { settings: { "encryption.kms_key_id": "arn:x", "security.tls_key": "/k" } } })));
    expect(json.fields.settings).toEqual({ "encryption.kms_key_id": REDACTED, "security.tls_key": "/k" });
    expect(redactLogLine("connecting with password=hunter2 token: abc, user=bob")).toBe(`connecting with password=${REDACTED} token: ${REDACTED}, user=bob`);
    expect(redactLogLine('encryption.kms_key_id = "arn:aws:kms:key/abc": must be set')).toBe(`encryption.kms_key_id = ${REDACTED}: must be set`);
  });
});
