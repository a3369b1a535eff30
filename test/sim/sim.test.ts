/**
 * The deterministic simulator (src/sim, TESTING.md section 2): fixed seeds, every seed that ever
 * failed (regressions.json), a time-boxed batch of random seeds, and replay determinism.
 * A failure prints the seed, the oracle and the last trace lines; replay it with
 * `npm run build && node dist/src/sim/cli.js --seed S --nodes N`.
 */
import { randomInt } from "node:crypto";
import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { runSeeds } from "../../src/sim/batch.js";
import { runSeed, type SeedResult } from "../../src/sim/simulator.js";

interface Regression {
  seed: number;
  nodes: 3 | 5;
  oracle: string;
  found: string;
}

const regressions = JSON.parse(readFileSync(new URL("./regressions.json", import.meta.url), "utf8")) as Regression[];

/** Fixed seeds: 1..160 with three voters, 1..45 with five. */
const FIXED_SEEDS_3 = 160;
const FIXED_SEEDS_5 = 45;
/** The random batch's time box, in seconds (SIM_RANDOM_SECONDS overrides it). */
const RANDOM_SECONDS = Number(process.env.SIM_RANDOM_SECONDS ?? 20);

function explain(result: SeedResult, voters: number): string {
  const v = result.violation;
  if (v === undefined) return "";
  return (
    `seed ${result.seed} (--nodes ${voters}) violates ${v.oracle}: ${v.message}\n` +
    `replay: npm run build && node dist/src/sim/cli.js --seed ${result.seed} --nodes ${voters}\n` +
    result.trace.map((line) => "  " + line).join("\n")
  );
}

async function expectClean(seed: number, voters: 3 | 5): Promise<SeedResult> {
  const result = await runSeed({ seed, voters });
  expect(result.violation, explain(result, voters)).toBeUndefined();
  return result;
}

describe("the simulator replays a seed exactly", () => {
  it("runs the same seed twice to the same trace hash, and different seeds to different ones", async () => {
    const first = await runSeed({ seed: 42, voters: 3 });
    const second = await runSeed({ seed: 42, voters: 3 });
    expect(second.traceHash).toBe(first.traceHash);
    expect(second.events).toBe(first.events);
    expect(second.faults).toEqual(first.faults);
    const other = await runSeed({ seed: 43, voters: 3 });
    expect(other.traceHash).not.toBe(first.traceHash);
  });

  it("replays a five-voter batch to the same batch hash", async () => {
    const a = await runSeeds({ seeds: [5, 6, 7], voters: 5 });
    const b = await runSeeds({ seeds: [5, 6, 7], voters: 5 });
    expect(b.summary).toEqual(a.summary);
    expect(a.summary.violations).toBe(0);
  });

  it("exercises what it claims: elections, commits, reads, crashes, partitions, membership changes", async () => {
    const batch = await runSeeds({ seeds: [1, 2, 3, 4, 5, 6, 7, 8], voters: 3 });
    const s = batch.summary;
    expect(s.violations).toBe(0);
    expect(s.elections).toBeGreaterThan(8);
    expect(s.commits).toBeGreaterThan(1000);
    expect(s.faults.crashes).toBeGreaterThan(0);
    expect(s.faults.partitions).toBeGreaterThan(0);
    expect(s.faults.membership_changes).toBeGreaterThan(0);
    expect(s.faults.strikes).toBeGreaterThan(0);
    expect(batch.results.reduce((n, r) => n + r.reads, 0)).toBeGreaterThan(0);
    expect(batch.results.reduce((n, r) => n + r.acknowledged, 0)).toBeGreaterThan(0);
  });
});

describe("pinned regression seeds", () => {
  for (const r of regressions) {
    it(`seed ${r.seed} with ${r.nodes} voters (${r.oracle})`, async () => {
      await expectClean(r.seed, r.nodes);
    });
  }
});

describe(`fixed seeds: 1..${FIXED_SEEDS_3} with 3 voters`, () => {
  for (let seed = 1; seed <= FIXED_SEEDS_3; seed++) {
    it(`seed ${seed}`, async () => {
      await expectClean(seed, 3);
    });
  }
});

describe(`fixed seeds: 1..${FIXED_SEEDS_5} with 5 voters`, () => {
  for (let seed = 1; seed <= FIXED_SEEDS_5; seed++) {
    it(`seed ${seed}`, async () => {
      await expectClean(seed, 5);
    });
  }
});

describe("random seeds (time-boxed)", () => {
  it(`runs random seeds for ${RANDOM_SECONDS} s`, async () => {
    const from = randomInt(1_000_000, 2 ** 31);
    const voters = randomInt(0, 2) === 0 ? 3 : 5;
    const deadline = performance.now() + RANDOM_SECONDS * 1000;
    const batch = await runSeeds({ from, voters, until: () => performance.now() >= deadline });
    const failure = batch.failure;
    expect(failure === undefined ? "" : explain(failure, voters) + "\nadd this seed to test/sim/regressions.json").toBe("");
    expect(batch.summary.seeds).toBeGreaterThan(0);
  });
});
