/** The lint rule that keeps the consensus core pure (STYLE.md section 1) really fires. */
import { join } from "node:path";
import { ESLint } from "eslint";
import { describe, expect, it } from "vitest";

const root = join(import.meta.dirname, "..", "..");

async function lint(file: string, code: string): Promise<string[]> {
  const eslint = new ESLint({ cwd: root });
  const [result] = await eslint.lintText(code, { filePath: join(root, file) });
  return result!.messages.map((m) => `${m.ruleId}: ${m.message}`);
}

describe("purity rule for src/consensus", () => {
  const impure: Array<[string, string]> = [
    ["node: import", 'import { readFileSync } from "node:fs";\nexport const x = readFileSync;\n'],
    ["bare built-in import", 'import * as net from "net";\nexport const x = net;\n'],
    ["Math.random", "export const x = Math.random();\n"],
    ["Date.now", "export const x = Date.now();\n"],
    ["new Date", "export const x = new Date();\n"],
    ["setTimeout", "export const x = setTimeout(() => {}, 1);\n"],
    ["async function", "export async function f(): Promise<number> { return 1; }\n"],
    ["await", "export const f = async (p: Promise<number>) => await p;\n"],
  ];
  for (const [what, code] of impure) {
    it(`refuses ${what} in the core`, async () => {
      const messages = await lint("src/consensus/example.ts", code);
      expect(messages.some((m) => /no-restricted/.test(m)), messages.join("\n")).toBe(true);
    });
  }

  it("allows async in the driver, but not the wall clock or ambient randomness", async () => {
    expect(await lint("src/consensus/driver.ts", "export async function f(): Promise<number> { return 1; }\n")).toEqual([]);
    expect((await lint("src/consensus/driver.ts", "export const x = Date.now();\n")).join()).toMatch(/no-restricted-properties/);
    expect((await lint("src/consensus/driver.ts", "export const x = Math.random();\n")).join()).toMatch(/no-restricted-properties/);
  });

  it("leaves the log adapter free to do I/O", async () => {
    expect(await lint("src/log/example.ts", 'import { readFileSync } from "node:fs";\nexport const x = readFileSync;\n')).toEqual([]);
  });
});
