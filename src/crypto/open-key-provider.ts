/**
 * From the `[encryption]` settings to a ready KeyProvider: the one place the server, verity-admin
 * and the backup tools get their provider from. The provider is wrapped in a CachingKeyProvider and
 * checked with `describe()`, retried while the KMS is unreachable (KMS_START_ATTEMPTS_MAX attempts
 * with backoff), so a node that cannot reach its KMS at start says so clearly and does not start.
 */

import { assertNever } from "../errors.js";
import { AwsKmsKeyProvider } from "./aws-kms.js";
import type { AwsCredentials, AwsCredentialsProvider, AwsKmsSdk } from "./aws-kms.js";
import { AzureKeyVaultKeyProvider } from "./azure-keyvault.js";
import type { AzureKeyVaultProviderOptions } from "./azure-keyvault.js";
import { GcpKmsKeyProvider } from "./gcp-kms.js";
import type { GcpKmsProviderOptions } from "./gcp-kms.js";
import { CachingKeyProvider, DataKeyCache } from "./data-key-cache.js";
import type { DataKeyCacheOptions } from "./data-key-cache.js";
import type { KeyDescription, KeyProvider, RetryOptions } from "./kms.js";
import { retryWhileUnavailable } from "./kms.js";
import { LocalKeyProvider } from "./local-kms.js";

/** The `[encryption]` section, checked (enabled = true). */
export type EncryptionSettings =
  | { readonly provider: "local"; readonly keyId: string }
  | {
      readonly provider: "aws-kms";
      readonly keyId: string;
      readonly region: string;
      readonly endpoint?: string;
      readonly credentials: AwsCredentials | AwsCredentialsProvider;
      readonly previousKeyIds?: readonly string[];
      readonly sdk?: AwsKmsSdk;
    }
  /** keyId: a CryptoKey name; endpoint: host[:port]; credentials: "application-default" or an auth client. */
  | ({ readonly provider: "gcp-kms" } & GcpKmsProviderOptions)
  /** keyId: https://<vault>/keys/<name>[/<version>]; credential: a TokenCredential (@azure/identity). */
  | ({ readonly provider: "azure-keyvault" } & AzureKeyVaultProviderOptions);

export interface OpenedKeyProvider {
  readonly provider: CachingKeyProvider;
  readonly description: KeyDescription;
}

export async function openKeyProvider(
  settings: EncryptionSettings,
  options: { readonly cache?: DataKeyCacheOptions; readonly retry?: RetryOptions } = {},
): Promise<OpenedKeyProvider> {
  let inner: KeyProvider;
  switch (settings.provider) {
    case "local":
      inner = await LocalKeyProvider.open(settings.keyId);
      break;
    case "aws-kms":
      inner = await AwsKmsKeyProvider.open(settings);
      break;
    case "gcp-kms":
      inner = await GcpKmsKeyProvider.open(settings);
      break;
    case "azure-keyvault":
      inner = await AzureKeyVaultKeyProvider.open(settings);
      break;
    default:
      return assertNever(settings);
  }
  const provider = new CachingKeyProvider(inner, new DataKeyCache(options.cache));
  try {
    const description = await retryWhileUnavailable(() => provider.describe(), options.retry);
    return { provider, description };
  } catch (e) {
    await provider.close();
    throw e;
  }
}
