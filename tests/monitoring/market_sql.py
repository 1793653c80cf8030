"""The market view's SQL against the tables the PostgreSQL sink really writes.

Usage: market_sql.py DASHBOARD.json PSQL URL OHLC_TABLE ALERTS_TABLE RISK_ALERTS_TABLE
(PGPASSWORD in the environment). Every SQL of the dashboard's panels and
PostgreSQL variables is run through psql after Grafana's substitutions (the
table variables by the given tables, $symbol by a symbol the symbol variable
returns, ${symbol:sqlstring} by all of them, $__timeFilter and
$__timeGroupAlias as Grafana's PostgreSQL data source expands them); each must
succeed and return rows, and each panel must read the columns it names.
Called by tests/monitoring/check.sh.
"""

import json
import re
import subprocess
import sys

dashboard, psql, url, ohlc, alerts, risk = sys.argv[1:7]
d = json.load(open(dashboard))


def run(sql, header=False):
    """Rows of sql (the column names first with header=True)."""
    out = subprocess.run(
        [psql, url, "-X", "-A", "-F", "\t", "-P", "footer=off", "-v", "ON_ERROR_STOP=1", "-c", sql],
        capture_output=True, text=True,
    )
    if out.returncode != 0:
        sys.exit(f"FAIL: psql refused\n{sql}\n{out.stderr}")
    rows = [line.split("\t") for line in out.stdout.splitlines()]
    return rows if header else rows[1:]


tables = {"ohlc_table": ohlc, "alerts_table": alerts, "risk_alerts_table": risk}
variables = {v["name"]: v for v in d["templating"]["list"]}
assert set(tables) <= set(variables), sorted(variables)


def substitute(sql, symbols):
    # $__timeFilter(col): col BETWEEN from AND to; $__timeGroupAlias(col, '1m'):
    # the epoch seconds floored to the interval, as "time".
    sql = re.sub(r"\$__timeFilter\(([^)]+)\)",
                 r"\1 BETWEEN '1970-01-01T00:00:00Z' AND '2100-01-01T00:00:00Z'", sql)
    def group(m):
        col, interval = m.group(1).strip(), m.group(2)
        secs = {"s": 1, "m": 60, "h": 3600}[interval[-1]] * int(interval[:-1])
        return f'floor(extract(epoch from {col})/{secs})*{secs} AS "time"'
    sql = re.sub(r"\$__timeGroupAlias\(([^,]+),\s*'(\d+[smh])'\)", group, sql)
    for name, table in tables.items():
        sql = sql.replace("${%s}" % name, table).replace("$" + name, table)
    sql = sql.replace("${symbol:sqlstring}", ",".join("'%s'" % s.replace("'", "''") for s in symbols))
    sql = sql.replace("${symbol}", symbols[0]).replace("$symbol", symbols[0])
    assert "$" not in sql, f"unsubstituted variable in {sql}"
    return sql


# The symbol variable first: its values feed the panels.
sym_sql = variables["symbol"]["query"]
symbols = [r[0] for r in run(substitute(sym_sql, ["-"]))]
assert len(symbols) >= 2, f"symbol variable returned {symbols}"
print(f"    variable symbol: {len(symbols)} symbols ({', '.join(symbols)})")

checked = 0
for p in d["panels"]:
    for t in p.get("targets", []):
        assert t["datasource"]["type"] == "grafana-postgresql-datasource", (p["title"], t)
        sql = substitute(t["rawSql"], symbols)
        cols, *rows = run(sql, header=True)
        assert rows, f"panel {p['title']!r}: no rows from\n{sql}"
        # What each kind of panel reads.
        need = {"candlestick": {"time", "open", "high", "low", "close", "volume"},
                "timeseries": {"time", "metric"}, "table": {"time"}}[p["type"]]
        assert need <= set(cols), f"panel {p['title']!r}: columns {cols}, needs {sorted(need)}"
        print(f"    panel {p['title']!r}: {len(rows)} rows, columns {', '.join(cols)}")
        checked += 1
assert checked >= 5, checked
print(f"ok: {checked} market-view queries and the symbol variable ran against the sink's tables")
