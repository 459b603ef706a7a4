-- Argo CD health check for kiln.dev/ImageBuild and kiln.dev/ImagePolicy (one
-- script serves both kinds), from kiln's kstatus conditions. Argo CD runs
-- scripts from argocd-cm without the string and math libraries (only base,
-- table and package), so this uses neither.
local hs = {}

-- The condition of type t in status.conditions, or nil.
local function condition(status, t)
  if type(status) ~= "table" or type(status.conditions) ~= "table" then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if type(c) == "table" and c.type == t then
      return c
    end
  end
  return nil
end

local function isTrue(c)
  return c ~= nil and c.status == "True"
end

-- v as a number (Argo CD hands json.Number values over as strings), else nil.
local function number(v)
  if type(v) == "number" then
    return v
  end
  if type(v) == "string" then
    return tonumber(v)
  end
  return nil
end

-- s when it is a non-empty string, else fallback.
local function text(s, fallback)
  if type(s) == "string" and s ~= "" then
    return s
  end
  return fallback
end

local o = obj
if type(o) ~= "table" then
  o = {}
end
local spec = o.spec
local status = o.status
local generation = nil
if type(o.metadata) == "table" then
  generation = number(o.metadata.generation)
end

-- Suspended wins: kiln neither builds nor evaluates while spec.suspend is true.
if type(spec) == "table" and spec.suspend == true then
  hs.status = "Suspended"
  hs.message = "suspended: spec.suspend is true"
  return hs
end

-- Status that describes an older spec (or none yet) says nothing.
local observed = nil
if type(status) == "table" then
  observed = number(status.observedGeneration)
end
if observed == nil or (generation ~= nil and observed < generation) then
  hs.status = "Progressing"
  if generation ~= nil then
    hs.message = "waiting for kiln to observe generation " .. generation
  else
    hs.message = "waiting for kiln to report status"
  end
  return hs
end

-- Stalled: retrying cannot help until someone changes something.
local stalled = condition(status, "Stalled")
if isTrue(stalled) then
  hs.status = "Degraded"
  hs.message = text(stalled.reason, "Stalled") .. ": " .. text(stalled.message, "see status.conditions")
  return hs
end

local ready = condition(status, "Ready")
if isTrue(ready) then
  hs.status = "Healthy"
  -- An ImageBuild names its latest image and its ID in each region; an
  -- ImagePolicy has no status.latestImage and shows Ready's message.
  local latest = status.latestImage
  if type(latest) == "table" and type(latest.version) == "string" and latest.version ~= "" then
    local ids = {}
    if type(latest.artifacts) == "table" then
      for _, a in ipairs(latest.artifacts) do
        if type(a) == "table" and type(a.region) == "string" and type(a.imageId) == "string" then
          table.insert(ids, a.region .. "=" .. a.imageId)
        end
      end
    end
    hs.message = "latest image " .. latest.version
    if #ids > 0 then
      hs.message = hs.message .. ": " .. table.concat(ids, ", ")
    end
  else
    hs.message = text(ready.message, "ready")
  end
  return hs
end

-- Building, waiting for an input, a retry scheduled, or retention actions
-- being retried.
local reconciling = condition(status, "Reconciling")
if isTrue(reconciling) then
  hs.status = "Progressing"
  hs.message = text(reconciling.message, text(reconciling.reason, "reconciling"))
  return hs
end

if ready ~= nil and ready.status == "False" then
  hs.status = "Degraded"
  hs.message = text(ready.message, text(ready.reason, "not ready"))
  return hs
end

-- Ready Unknown or missing, with nothing in progress.
hs.status = "Progressing"
hs.message = "waiting for kiln to report Ready"
if ready ~= nil then
  hs.message = text(ready.message, hs.message)
end
return hs
