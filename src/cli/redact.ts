/**
 * Secrets out of what `verity-admin diagnostics export` collects. A value is replaced by
 * "[REDACTED]" when its name (a config key, an environment variable, a JSON field of a log line)
 * contains key, secret, password, passwd, token or credential. `tls_key` stays: it holds the path
 * of the private key, and the file's contents are never read. Credentials in URLs
 * (`https://user:pass@host`) are cut out of every string.
 */

export const REDACTED = "[REDACTED]";
/** Names whose values are secrets. */
export const SECRET_NAME = /key|secret|passw(or)?d|token|credential/i;
/** Names that match SECRET_NAME but hold a file path, which may stay (the file is never read). */
const PATH_NAMES: ReadonlySet<string> = new Set(["tls_key", "security.tls_key", "VERITY_SECURITY_TLS_KEY", "VERITY_TLS_KEY", "tls-key"]);
/** Nesting followed at most (TOML files are parsed with maxDepth 32). */
export const REDACT_DEPTH_MAX = 64;

const URL_CREDENTIALS = /([a-z][a-z0-9+.-]*:\/\/)[^/@\s"']+@/gi;
/** `password=...`, `token: ...` in free text (log lines that are not JSON). */
const TEXT_SECRET = /\b([A-Za-z0-9_.-]*(?:key|secret|passw(?:or)?d|token|credential)[A-Za-z0-9_.-]*)(\s*[=:]\s*)("[^"]*"|'[^']*'|[^\s,;]+)/gi;

export function isSecretName(name: string): boolean {
  return SECRET_NAME.test(name) && !PATH_NAMES.has(name);
}

/** A string with the credentials of any URL in it cut out. */
export function redactUrls(text: string): string {
  return text.replace(URL_CREDENTIALS, `$1${REDACTED}@`);
}

/** A copy of a JSON-like tree with every secret value replaced (by its name, at any depth). */
export function redactTree(value: unknown, depth = 0): unknown {
  if (depth > REDACT_DEPTH_MAX) return REDACTED;
  if (typeof value === "string") return redactUrls(value);
  if (Array.isArray(value)) return value.map((item) => redactTree(item, depth + 1));
  if (value !== null && typeof value === "object" && !(value instanceof Date)) {
    const out: Record<string, unknown> = {};
    for (const [name, inner] of Object.entries(value)) out[name] = isSecretName(name) ? REDACTED : redactTree(inner, depth + 1);
    return out;
  }
  return value;
}

/** One log line: a JSON line has its secret fields replaced; other text its `name=value` secrets. */
export function redactLogLine(line: string): string {
  const trimmed = line.trim();
  if (trimmed.startsWith("{")) {
    try {
      return JSON.stringify(redactTree(JSON.parse(trimmed)));
    } catch {
      // Not JSON after all: treated as text.
    }
  }
  return redactUrls(line).replace(TEXT_SECRET, (whole, name: string, separator: string) => (PATH_NAMES.has(name) ? whole : `${name}${separator}${REDACTED}`));
}

/** The VERITY_* variables of an environment, secrets redacted. */
export function redactedEnvironment(env: Readonly<Record<string, string | undefined>>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const name of Object.keys(env).sort()) {
    const value = env[name];
    if (!name.startsWith("VERITY_") || value === undefined) continue;
    out[name] = isSecretName(name) ? REDACTED : redactUrls(value);
  }
  return out;
}
