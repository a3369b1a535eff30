/**
 * Progress of a snapshot or a restore on stderr (stdout keeps the result, one JSON object with
 * --json): a bar redrawn in place on a terminal, a line at most once a second otherwise (cron
 * mail, CI logs), and nothing with `quiet`.
 */

import { formatBytes } from "../cli/common.js";
import { PROGRESS_BAR_INTERVAL_MS, PROGRESS_LINE_INTERVAL_MS } from "./backup-limits.js";

const BAR_WIDTH = 30;

export class ByteProgress {
  private done = 0;
  private lastDrawMs = 0;
  private drawn = false;
  private phase = "";

  constructor(
    private readonly label: string,
    private total: number,
    private readonly terminal: boolean = process.stderr.isTTY === true,
    private readonly quiet = false,
  ) {}

  /** Starts a named phase ("downloading", "rebuilding projections") with its own total. */
  start(phase: string, total: number): void {
    if (this.phase !== "") this.draw(true);
    this.finishLine();
    this.phase = phase;
    this.total = total;
    this.done = 0;
    this.draw(true);
  }

  add(bytes: number): void {
    this.done += bytes;
    this.draw(false);
  }

  /** Sets the amount done (for phases counted in positions rather than bytes). */
  set(done: number): void {
    this.done = done;
    this.draw(false);
  }

  private draw(force: boolean): void {
    if (this.quiet) return;
    const now = Date.now();
    if (!force && now - this.lastDrawMs < (this.terminal ? PROGRESS_BAR_INTERVAL_MS : PROGRESS_LINE_INTERVAL_MS)) return;
    this.lastDrawMs = now;
    const fraction = this.total <= 0 ? 1 : Math.min(1, this.done / this.total);
    const percent = `${Math.floor(fraction * 100)}%`.padStart(4);
    const label = this.phase === "" ? this.label : `${this.label}: ${this.phase}`;
    const amount = this.phase.includes("positions") ? `${this.done} of ${this.total}` : `${formatBytes(this.done)} of ${formatBytes(this.total)}`;
    if (this.terminal) {
      const filled = Math.round(fraction * BAR_WIDTH);
      process.stderr.write(`\r${label} [${"#".repeat(filled)}${"-".repeat(BAR_WIDTH - filled)}] ${percent}  ${amount}\x1b[K`);
      this.drawn = true;
    } else {
      process.stderr.write(`${label}: ${amount} (${percent.trim()})\n`);
    }
  }

  private finishLine(): void {
    if (this.drawn) process.stderr.write("\n");
    this.drawn = false;
  }

  /** Draws the final state and ends the bar's line. */
  finish(): void {
    this.done = Math.max(this.done, this.total);
    this.draw(true);
    this.finishLine();
  }
}
