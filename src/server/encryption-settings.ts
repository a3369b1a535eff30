/**
 * From the `[encryption]` settings to a running key provider (issue 9): what verity-server does
 * before it opens the data directory. The provider is opened (and its key checked, with bounded
 * retries while the KMS is unreachable) by openKeyProvider; this file maps the settings and writes
 * the start-up log line (provider, key id, version, where: never key material).
 */

import { credentialsFromEnvironment } from "../crypto/aws-kms.js";
import { azureCredentialFromEnvironment } from "../crypto/azure-keyvault.js";
import type { KeyProvider } from "../crypto/kms.js";
import type { EncryptionSettings, OpenedKeyProvider } from "../crypto/open-key-provider.js";
import { openKeyProvider } from "../crypto/open-key-provider.js";
import { assertNever, invariant } from "../errors.js";
import type { Settings } from "./settings.js";
import { regionOfKeyArn } from "./settings.js";

/** The checked `[encryption]` section as openKeyProvider takes it; undefined when encryption is off. */
export function encryptionSettingsOf(settings: Settings["encryption"], env: NodeJS.ProcessEnv = process.env): EncryptionSettings | undefined {
  if (!settings.enabled) return undefined;
  const keyId = settings.kmsKeyId;
  invariant(keyId !== undefined, "settings checked: enabled encryption has kms_key_id");
  const provider = settings.kmsProvider;
  switch (provider) {
    case "local":
      return { provider, keyId };
    case "aws-kms": {
      const region = settings.region ?? regionOfKeyArn(keyId);
      invariant(region !== undefined, "settings checked: aws-kms has a region");
      return {
        provider, keyId, region,
        ...(settings.kmsEndpoint === undefined ? {} : { endpoint: settings.kmsEndpoint }),
        credentials: credentialsFromEnvironment(env),
        previousKeyIds: settings.kmsPreviousKeyIds,
      };
    }
    case "gcp-kms": // Application Default Credentials (GOOGLE_APPLICATION_CREDENTIALS, or the metadata server on Google Cloud)
      return {
        provider, keyId, credentials: "application-default", previousKeyIds: settings.kmsPreviousKeyIds,
        ...(settings.kmsEndpoint === undefined ? {} : { endpoint: settings.kmsEndpoint }),
      };
    case "azure-keyvault": // AZURE_TENANT_ID / AZURE_CLIENT_ID / AZURE_CLIENT_SECRET, else DefaultAzureCredential
      return {
        provider, keyId, credential: azureCredentialFromEnvironment(env), previousKeyIds: settings.kmsPreviousKeyIds,
        ...(settings.kmsEndpoint === undefined ? {} : { endpoint: settings.kmsEndpoint }),
      };
    default:
      return assertNever(provider);
  }
}

/** What the node keeps of its provider: the provider (to pass to DataDir.open and close at shutdown) and how it was configured. */
export interface NodeKeyProvider {
  readonly provider: KeyProvider;
  readonly opened: OpenedKeyProvider;
  readonly settings: EncryptionSettings;
}

/** The minimal logger this needs (pino's shape). */
interface InfoWarnSink {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
}

/**
 * Opens the key provider when `[encryption] enabled = true` (else undefined), logging each retry
 * while the KMS is unreachable and then the provider, key id, version and where. Throws a KmsError
 * (with what to do) when the key cannot be used: the node must not start.
 */
export async function openNodeKeyProvider(settings: Settings, logger: InfoWarnSink): Promise<NodeKeyProvider | undefined> {
  const encryption = encryptionSettingsOf(settings.encryption);
  if (encryption === undefined) return undefined;
  const opened = await openKeyProvider(encryption, {
    retry: {
      onRetry: (attempt, error, delayMs) =>
        logger.warn({ provider: encryption.provider, attempt, retry_in_ms: delayMs, error: error.message }, "the KMS did not answer; retrying"),
    },
  });
  const d = opened.description;
  logger.info({ provider: d.provider, key_id: d.keyId, key_version: d.keyVersion, where: d.where }, "at-rest encryption on: key provider ready");
  return { provider: opened.provider, opened, settings: encryption };
}
