/**
 * Real TLS certificates for tests, made with openssl: a CA, and leaf certificates for servers
 * and clients whose subject CN is the identity VerityDB maps to a role. A second, unrelated CA
 * lets tests present a certificate "from another CA".
 */
import { execFileSync } from "node:child_process";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";

export interface CertFiles {
  cert: string;
  key: string;
}

export class TestCa {
  readonly cert: string;
  readonly key: string;
  private serial = 1;

  constructor(
    readonly dir: string,
    readonly name = "verity-test-ca",
  ) {
    mkdirSync(dir, { recursive: true });
    this.key = join(dir, `${name}.key`);
    this.cert = join(dir, `${name}.crt`);
    openssl(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", this.key, "-out", this.cert,
      "-days", "2", "-subj", `/CN=${name}`, "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"]);
  }

  /** A leaf certificate with CN = identity, valid for loopback (127.0.0.1, ::1, localhost). */
  issue(identity: string): CertFiles {
    const key = join(this.dir, `${identity}.key`);
    const csr = join(this.dir, `${identity}.csr`);
    const cert = join(this.dir, `${identity}.crt`);
    const ext = join(this.dir, `${identity}.ext`);
    writeFileSync(ext, [
      "basicConstraints=CA:FALSE",
      "keyUsage=critical,digitalSignature,keyEncipherment",
      "extendedKeyUsage=serverAuth,clientAuth",
      "subjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost",
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
