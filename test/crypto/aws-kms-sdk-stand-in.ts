/**
 * A stand-in for the slice of @aws-sdk/client-kms that src/crypto/aws-kms.ts uses (AwsKmsSdk), for
 * as long as that package is not installed. It speaks the same wire protocol to the fake KMS: JSON
 * 1.1 over HTTP POST, `X-Amz-Target: TrentService.<Operation>`, blobs as base64, a SigV4-shaped
 * Authorization header naming the access key id (not a real signature), and it fails the way the
 * SDK does: service errors carry `name` = the error type and `$metadata.httpStatusCode`; it retries
 * 5xx, throttling and network errors up to `maxAttempts`; request timeouts throw TimeoutError.
 * When the real SDK is installed, test/crypto/aws-kms.test.ts runs the same scenarios on it too.
 */

import type { AwsCredentials, AwsCredentialsProvider, AwsKmsClient, AwsKmsClientConfig, AwsKmsCommand, AwsKmsSdk } from "../../src/crypto/aws-kms.js";

const BLOB_FIELDS = new Set(["CiphertextBlob", "Plaintext"]);
const RETRYABLE_TYPES = new Set(["ThrottlingException", "KMSInternalException", "KeyUnavailableException", "DependencyTimeoutException"]);

abstract class Command implements AwsKmsCommand {
  constructor(readonly input: object) {}
  abstract readonly operation: string;
}

class GenerateDataKeyCommand extends Command { readonly operation = "GenerateDataKey"; }
class DecryptCommand extends Command { readonly operation = "Decrypt"; }
class ReEncryptCommand extends Command { readonly operation = "ReEncrypt"; }
class DescribeKeyCommand extends Command { readonly operation = "DescribeKey"; }

function toWire(input: object): string {
  // The holder's own value: JSON.stringify has already turned a Buffer into {type, data} via toJSON.
  return JSON.stringify(input, function (this: Record<string, unknown>, key, value: unknown) {
    const raw = this[key];
    return BLOB_FIELDS.has(key) && raw instanceof Uint8Array ? Buffer.from(raw).toString("base64") : value;
  });
}

function fromWire(text: string): unknown {
  return JSON.parse(text, (key, value: unknown) => (BLOB_FIELDS.has(key) && typeof value === "string" ? new Uint8Array(Buffer.from(value, "base64")) : value));
}

class KMSClient implements AwsKmsClient {
  private destroyed = false;
  constructor(private readonly config: AwsKmsClientConfig) {}

  async send(command: AwsKmsCommand): Promise<unknown> {
    if (this.destroyed) throw new Error("client destroyed");
    const credentials = typeof this.config.credentials === "function"
      ? await (this.config.credentials as AwsCredentialsProvider)()
      : (this.config.credentials as AwsCredentials);
    let lastError: unknown;
    for (let attempt = 1; attempt <= this.config.maxAttempts; attempt++) {
      try {
        return await this.once((command as Command).operation, command.input, credentials);
      } catch (e) {
        lastError = e;
        const status = (e as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode;
        const network = (e as { name?: string }).name === "TypeError"; // fetch failed: the cause has the code
        const retryable = network || (status !== undefined && status >= 500) || RETRYABLE_TYPES.has((e as Error).name);
        if (!retryable) throw e;
      }
    }
    throw lastError;
  }

  destroy(): void {
    this.destroyed = true;
  }

  private async once(operation: string, input: object, credentials: AwsCredentials): Promise<unknown> {
    const date = new Date().toISOString().replace(/[-:]/g, "").slice(0, 8);
    const endpoint = this.config.endpoint ?? `https://kms.${this.config.region}.amazonaws.com`;
    let response: Response;
    try {
      response = await fetch(endpoint + "/", {
        method: "POST",
        headers: {
          "content-type": "application/x-amz-json-1.1",
          "x-amz-target": `TrentService.${operation}`,
          authorization: `AWS4-HMAC-SHA256 Credential=${credentials.accessKeyId}/${date}/${this.config.region}/kms/aws4_request, ` +
            "SignedHeaders=content-type;host;x-amz-date;x-amz-target, Signature=0000",
        },
        body: toWire(input),
        signal: AbortSignal.timeout(this.config.requestHandler.requestTimeout),
      });
    } catch (e) {
      if ((e as Error).name === "TimeoutError") throw Object.assign(new Error(`request exceeded ${this.config.requestHandler.requestTimeout} ms`), { name: "TimeoutError", code: "ETIMEDOUT" });
      throw e;
    }
    const text = await response.text();
    if (response.status >= 300) {
      const body = JSON.parse(text) as { __type?: string; message?: string; Message?: string };
      const raw = response.headers.get("x-amzn-errortype") ?? body.__type ?? "UnknownError";
      const name = raw.split(":")[0]!.split("#").at(-1)!;
      throw Object.assign(new Error(body.message ?? body.Message ?? "UnknownError"), {
        name, $fault: response.status >= 500 ? "server" : "client", $metadata: { httpStatusCode: response.status },
      });
    }
    return fromWire(text);
  }
}

export const awsKmsSdkStandIn: AwsKmsSdk = {
  KMSClient,
  GenerateDataKeyCommand,
  DecryptCommand,
  ReEncryptCommand,
  DescribeKeyCommand,
};
