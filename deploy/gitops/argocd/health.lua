-- Argo CD health check for dataflow.dev/Pipeline.
-- Install: resource.customizations.health.dataflow.dev_Pipeline in argocd-cm (see README.md).
--   Ready=True                         -> Healthy
--   Stalled=True                       -> Degraded, with the condition's message
--   stopped by desire, nothing moving  -> Suspended
--   otherwise                          -> Progressing
local hs = {}
hs.status = "Progressing"
hs.message = "Waiting for the operator"

if obj.metadata ~= nil and obj.metadata.deletionTimestamp ~= nil then
  hs.message = "Being deleted"
  return hs
end
if obj.status == nil or obj.status.conditions == nil then
  return hs
end
if obj.status.observedGeneration ~= nil and obj.metadata ~= nil and obj.metadata.generation ~= nil
    and obj.status.observedGeneration ~= obj.metadata.generation then
  hs.message = "The operator has not seen the latest spec yet"
  return hs
end

local ready, stalled, reconciling = nil, nil, nil
for _, condition in ipairs(obj.status.conditions) do
  if condition.type == "Ready" then ready = condition end
  if condition.type == "Stalled" then stalled = condition end
  if condition.type == "Reconciling" then reconciling = condition end
end

if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = (stalled.reason or "Stalled") .. ": " .. (stalled.message or "")
  return hs
end
local desired = "Stopped"
if obj.spec ~= nil and obj.spec.desiredStatus ~= nil then desired = obj.spec.desiredStatus end
if ready ~= nil and ready.status == "True" then
  if desired == "Stopped" then
    hs.status = "Suspended"
    hs.message = "Stopped, as desired"
  else
    hs.status = "Healthy"
    hs.message = ready.message or "Ready"
  end
  return hs
end
if reconciling ~= nil and reconciling.status == "True" then
  hs.message = (reconciling.reason or "Reconciling") .. ": " .. (reconciling.message or "")
elseif ready ~= nil then
  hs.message = ready.message or "Not ready"
end
return hs
