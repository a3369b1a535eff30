/**
 * The run's certificate authority, made with openssl: a CA, and leaf certificates whose subject CN
 * is the identity VerityDB maps to a role (node-N, admin, the workload's client). Node
 * certificates name the node's address, so peers that dial it by IP accept it.
 */
import { execFileSync } from "node:child_process";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";

export interface CertFiles {
  cert: string;
  key: string;
}

export class CertificateAuthority {
  readonly cert: string;
  readonly key: string;
  private serial = 1;

  constructor(readonly dir: string) {
    mkdirSync(dir, { recursive: true });
    this.key = join(dir, "ca.key");
    this.cert = join(dir, "ca.crt");
    openssl(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", this.key, "-out", this.cert,
      "-days", "2", "-subj", "/CN=verity-jepsen-ca", "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"]);
  }

  /** A leaf certificate with CN = identity, valid for loopback and the given extra IP addresses. */
  issue(identity: string, ips: readonly string[] = []): CertFiles {
    const key = join(this.dir, `${identity}.key`);
    const csr = join(this.dir, `${identity}.csr`);
    const cert = join(this.dir, `${identity}.crt`);
    const ext = join(this.dir, `${identity}.ext`);
    const names = ["IP:127.0.0.1", "IP:::1", "DNS:localhost", ...ips.filter((ip) => ip !== "127.0.0.1").map((ip) => `IP:${ip}`)];
    writeFileSync(ext, [
      "basicConstraints=CA:FALSE",
      "keyUsage=critical,digitalSignature,keyEncipherment",
      "extendedKeyUsage=serverAuth,clientAuth",
      `subjectAltName=${names.join(",")}`,
    ].join("\n"));
    openssl(["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", csr, "-subj", `/CN=${identity}`]);
    openssl(["x509", "-req", "-in", csr, "-CA", this.cert, "-CAkey", this.key, "-set_serial", String(this.serial++), "-days", "2",
      "-out", cert, "-extfile", ext]);
    return { cert, key };
  }

  pem(): Buffer {
    return readFileSync(this.cert);
  }
}

function openssl(args: string[]): void {
  execFileSync("openssl", args, { stdio: ["ignore", "ignore", "pipe"] });
}
