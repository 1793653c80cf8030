-- Argo CD health check for tickflow.io/StreamQuery.
-- Lua 5.1 (gopher-lua), base library only. Argo CD sets the global `obj` to
-- the resource; the script returns { status = ..., message = ... }.
-- Keep in sync with argocd-cm-health.yaml (tests/argocd checks they match).
local hs = {}

local function str(v)
  if type(v) == "string" and v ~= "" then
    return v
  end
  return nil
end

local function findCondition(conditions, ctype)
  if type(conditions) ~= "table" then
    return nil
  end
  for _, c in ipairs(conditions) do
    if type(c) == "table" and c.type == ctype then
      return c
    end
  end
  return nil
end

local function condMessage(c)
  if c == nil then
    return nil
  end
  return str(c.message)
end

local metadata = obj.metadata
if type(metadata) ~= "table" then
  metadata = {}
end
local spec = obj.spec
if type(spec) ~= "table" then
  spec = {}
end
local status = obj.status
local generation = tonumber(metadata.generation)

-- 1. The operator has not yet observed the current spec.
local observed = nil
if type(status) == "table" then
  observed = tonumber(status.observedGeneration)
end
if observed == nil or (generation ~= nil and observed < generation) then
  hs.status = "Progressing"
  if generation ~= nil then
    hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  else
    hs.message = "Waiting for the operator to observe the resource"
  end
  return hs
end

local conditions = status.conditions
local ready = findCondition(conditions, "Ready")
local progressing = findCondition(conditions, "Progressing")
local degraded = findCondition(conditions, "Degraded")
local sqlValid = findCondition(conditions, "SqlValid")
local phase = str(status.phase)
local replicas = tonumber(status.readyReplicas) or 0

-- 2. The SQL does not validate: no worker runs until the query is fixed.
if sqlValid ~= nil and sqlValid.status == "False" then
  hs.status = "Degraded"
  hs.message = condMessage(sqlValid) or str(sqlValid.reason) or "SQL is invalid"
  return hs
end

-- 3. Failed or degraded.
if phase == "Failed" or phase == "Degraded" then
  hs.status = "Degraded"
  local msg = nil
  if degraded ~= nil and degraded.status == "True" then
    msg = condMessage(degraded)
  end
  hs.message = msg or condMessage(ready) or str(status.lastError) or phase
  return hs
end

-- 4. Suspended: scaled to zero after the final checkpoint.
if phase == "Suspended" then
  hs.status = "Suspended"
  hs.message = condMessage(ready) or ("Suspended: " .. tostring(replicas) .. " replicas")
  return hs
end

-- 5. Asked to suspend, the worker is still taking its final checkpoint.
if spec.state == "suspended" then
  hs.status = "Progressing"
  hs.message = "Suspending: waiting for the final checkpoint"
  return hs
end

-- 6. Running and ready.
if phase == "Running" and ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = condMessage(ready) or ("Running: " .. tostring(replicas) .. " ready replica(s)")
  return hs
end

-- 7. Pending, running but not ready yet, or a phase this script does not know.
hs.status = "Progressing"
hs.message = condMessage(ready) or condMessage(progressing)
if hs.message == nil then
  if phase ~= nil then
    hs.message = "Phase " .. phase .. ": waiting for the worker to become ready"
  else
    hs.message = "Waiting for the operator to set a phase"
  end
end
return hs
