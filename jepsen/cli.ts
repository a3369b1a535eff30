/** `npm run jepsen`: the jepsen-lite fault-injection harness (see docs/jepsen.md once it lands). */
process.stderr.write("npm run jepsen: the harness is being built (issue 8); nothing to run yet\n");
process.exitCode = 2;
