/** What each `verity-admin doctor` check reports: PASS, WARN or FAIL, what it found, and the fix to try. */

export type CheckStatus = "PASS" | "WARN" | "FAIL";

/** One check's outcome. `fix` is set for WARN and FAIL. */
export interface CheckResult {
  name: string;
  status: CheckStatus;
  found: string;
  /** More lines of what was found (one item or problem each). */
  details?: string[];
  fix?: string;
}

export function pass(name: string, found: string, details?: string[]): CheckResult {
  return { name, status: "PASS", found, ...(details === undefined ? {} : { details }) };
}

export function warn(name: string, found: string, fix: string, details?: string[]): CheckResult {
  return { name, status: "WARN", found, fix, ...(details === undefined ? {} : { details }) };
}

export function fail(name: string, found: string, fix: string, details?: string[]): CheckResult {
  return { name, status: "FAIL", found, fix, ...(details === undefined ? {} : { details }) };
}
