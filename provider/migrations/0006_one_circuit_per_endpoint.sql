-- An inference endpoint has exactly one circuit. Before this index, two concurrent first
-- syncs of one endpoint could both insert one (check-then-act). Keep the oldest circuit of
-- any endpoint that already has several (the others were never returned as its URL once
-- the oldest existed; the reconciler deletes their etcd keys as unowned), then let the
-- index decide every later race. NULL endpoint ids (interactive circuits) never collide.
DELETE FROM routes WHERE circuit_id IN (
    SELECT c.id FROM circuits c WHERE c.endpoint_id IS NOT NULL AND EXISTS (
        SELECT 1 FROM circuits o WHERE o.endpoint_id = c.endpoint_id
        AND (o.created_at < c.created_at OR (o.created_at = c.created_at AND o.id < c.id))));
DELETE FROM circuits WHERE endpoint_id IS NOT NULL AND EXISTS (
    SELECT 1 FROM circuits o WHERE o.endpoint_id = circuits.endpoint_id
    AND (o.created_at < circuits.created_at OR (o.created_at = circuits.created_at AND o.id < circuits.id)));
DROP INDEX circuits_endpoint;
CREATE UNIQUE INDEX circuits_endpoint ON circuits (endpoint_id);
