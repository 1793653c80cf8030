-- q4 in batch (the standard formulation): the winning bid of each auction
-- while it was open, averaged per category.
SELECT category, AVG(final) AS avg_final FROM (
  SELECT a.id, a.category, MAX(b.price) AS final
  FROM auction a JOIN bid b
    ON a.id = b.auction AND b.date_time BETWEEN a.date_time AND a.expires
  GROUP BY a.id, a.category) q
GROUP BY category
