/**
 * Certificate checks for `verity-admin doctor`: the validity dates of every certificate in
 * `security.tls_cert` and `security.tls_ca` (node:crypto X509Certificate), and for tls_cert also
 * that it matches tls_key and was issued by tls_ca. The key file is read to compare, never shown.
 */

import { X509Certificate, createPrivateKey } from "node:crypto";
import { readFileSync, statSync } from "node:fs";
import type { CheckResult } from "./check-result.js";

/** A certificate that expires within this many days is a warning. */
export const CERT_EXPIRY_WARN_DAYS = 30;
/** Certificates read from one file at most (a chain or a CA bundle). */
export const CERTS_PER_FILE_MAX = 200;
/** A PEM file larger than this is not a certificate file. */
export const CERT_FILE_BYTES_MAX = 4 * 1024 * 1024;
const DAY_MS = 86_400_000;


const PEM_CERTIFICATE = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g;

/** Every certificate in a PEM file; throws with the reason when there is none or the file cannot be read. */
export function readCertificates(path: string): X509Certificate[] {
  const size = statSync(path).size;
  if (size > CERT_FILE_BYTES_MAX) throw new Error(`the file is ${size} bytes; a certificate file is at most ${CERT_FILE_BYTES_MAX}`);
  const text = readFileSync(path, "utf8");
  const blocks = text.match(PEM_CERTIFICATE) ?? [];
  if (blocks.length === 0) throw new Error("no PEM certificate (-----BEGIN CERTIFICATE-----) in the file");
  if (blocks.length > CERTS_PER_FILE_MAX) throw new Error(`${blocks.length} certificates in one file; at most ${CERTS_PER_FILE_MAX} are read`);
  return blocks.map((b) => new X509Certificate(b));
}

function subjectName(cert: X509Certificate): string {
  const cn = /(?:^|\n)CN=([^\n]*)/.exec(cert.subject)?.[1];
  return cn === undefined ? cert.subject.replace(/\n/g, ", ") : `CN=${cn}`;
}

function day(ms: number): string {
  return new Date(ms).toISOString().slice(0, 10);
}

/** Expiry of the certificates of one file: FAIL when one has expired or is not valid yet, WARN within CERT_EXPIRY_WARN_DAYS. */
function expiry(setting: string, path: string, certs: X509Certificate[], nowMs: number): CheckResult {
  const name = setting.replace("_", "-");
  const renew = setting === "tls_ca"
    ? "issue a new CA certificate, re-issue the node and client certificates with it, put it in place on every node and restart them one at a time"
    : "issue a new certificate for this node from the CA, put it at this path and restart the node";
  const early = certs.find((c) => Date.parse(c.validFrom) > nowMs);
  if (early !== undefined) {
    return {
      name, status: "FAIL", found: `${path}: ${subjectName(early)} is not valid before ${early.validFrom}`,
      fix: "check this machine's clock (timedatectl), or use a certificate that is valid now",
    };
  }
  const soonest = certs.reduce((a, b) => (Date.parse(a.validTo) <= Date.parse(b.validTo) ? a : b));
  const endMs = Date.parse(soonest.validTo);
  const days = Math.floor((endMs - nowMs) / DAY_MS);
  const what = `${path}: ${certs.length === 1 ? subjectName(soonest) : `${certs.length} certificates; the first to expire is ${subjectName(soonest)}`}`;
  if (endMs <= nowMs) return { name, status: "FAIL", found: `${what}: expired on ${day(endMs)}`, fix: renew };
  if (days < CERT_EXPIRY_WARN_DAYS) {
    return { name, status: "WARN", found: `${what}: expires on ${day(endMs)}, in ${days} day${days === 1 ? "" : "s"}`, fix: `${renew}, before ${day(endMs)}` };
  }
  return { name, status: "PASS", found: `${what}: valid until ${day(endMs)} (${days} days)` };
}

/**
 * Checks `security.tls_cert` (with its key and CA) or `security.tls_ca` at `nowMs`. `path` undefined:
 * TLS is off, which is a pass (the settings loader already refuses plaintext off loopback).
 */
export function checkCertificate(
  setting: "tls_cert" | "tls_ca",
  path: string | undefined,
  nowMs: number,
  related: { keyPath?: string; caPath?: string } = {},
): CheckResult {
  const name = setting.replace("_", "-");
  if (path === undefined) return { name, status: "PASS", found: `security.${setting} is not set: TLS is off (plaintext, loopback only)` };
  let certs: X509Certificate[];
  try {
    certs = readCertificates(path);
  } catch (e) {
    const reason = (e as NodeJS.ErrnoException).code ?? (e instanceof Error ? e.message : String(e));
    return { name, status: "FAIL", found: `${path}: cannot read a certificate: ${reason}`, fix: `point security.${setting} at a PEM certificate file readable by the server's user` };
  }
  const result = expiry(setting, path, certs, nowMs);
  if (setting === "tls_ca" || result.status === "FAIL") return result;
  const problems = leafProblems(certs[0]!, related);
  if (problems.length === 0) return result;
  return {
    name, status: "FAIL", found: `${result.found}; ${problems.map((p) => p.found).join("; ")}`,
    fix: problems.map((p) => p.fix).join("; "),
  };
}

/** Does the leaf certificate match its key, and was it issued by the CA? */
function leafProblems(leaf: X509Certificate, related: { keyPath?: string; caPath?: string }): Array<{ found: string; fix: string }> {
  const problems: Array<{ found: string; fix: string }> = [];
  if (related.keyPath !== undefined) {
    let matches: boolean | undefined;
    try {
      matches = leaf.checkPrivateKey(createPrivateKey(readFileSync(related.keyPath)));
    } catch {
      // An unreadable or passphrase-protected key: the server's own start-up reports it.
      matches = undefined;
    }
    if (matches === false) {
      problems.push({ found: `it does not match the key in security.tls_key (${related.keyPath})`, fix: "use the private key this certificate was issued for (or re-issue the certificate for this key)" });
    }
  }
  if (related.caPath !== undefined) {
    let cas: X509Certificate[] = [];
    try {
      cas = readCertificates(related.caPath);
    } catch {
      // Reported by the tls-ca check.
    }
    if (cas.length > 0 && !cas.some((ca) => leaf.checkIssued(ca) && leaf.verify(ca.publicKey))) {
      problems.push({
        found: `it was not issued by the CA in security.tls_ca (issuer ${leaf.issuer.replace(/\n/g, ", ")})`,
        fix: "issue the certificate from the cluster's CA, or set security.tls_ca to the CA that issued it; peers and clients refuse it otherwise",
      });
    }
  }
  return problems;
}
