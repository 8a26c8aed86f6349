-- Auto-route hip and pelvis radiographs to triage-node; never route its results back.
--
-- Orthanc calls OnStoredInstance for every stored instance. A CR or DX image whose
-- Body Part Examined is HIP or PELVIS is sent by C-STORE to the DicomModalities
-- entry TRIAGE_NODE (see orthanc.json). triage-node's own results (an SR and a
-- secondary capture per study) are recognised and not sent: by their modality (SR,
-- OT), by the device signature of triage_node/identity.py (Manufacturer and
-- Manufacturer Model Name, or the Series Description prefix), and by having been
-- stored by the node's AE title. Keep the constants below in step with identity.py.

TRIAGE_NODE = 'triage-node'           -- key in DicomModalities
TRIAGE_NODE_AET = 'TRIAGE'            -- the node's AE title (its results come from it)
ROUTED_MODALITIES = { CR = true, DX = true }
ROUTED_BODY_PARTS = { HIP = true, PELVIS = true }
OUR_MANUFACTURER = 'triage-node project'
OUR_MODEL_NAME = 'triage-node'
OUR_SERIES_PREFIX = 'AI triage: osteoporosis'

local function trim(value)
  if value == nil then
    return ''
  end
  return (string.gsub(tostring(value), '^%s*(.-)%s*$', '%1'))
end

local function IsTriageNodeResult(tags, origin)
  if origin ~= nil and origin['RequestOrigin'] == 'DicomProtocol' and
      trim(origin['RemoteAet']) == TRIAGE_NODE_AET then
    return true
  end
  local modality = trim(tags['Modality'])
  if modality == 'SR' or modality == 'OT' then
    return true
  end
  if trim(tags['Manufacturer']) == OUR_MANUFACTURER and
      trim(tags['ManufacturerModelName']) == OUR_MODEL_NAME then
    return true
  end
  local description = trim(tags['SeriesDescription'])
  return string.sub(description, 1, string.len(OUR_SERIES_PREFIX)) == OUR_SERIES_PREFIX
end

function OnStoredInstance(instanceId, tags, metadata, origin)
  if IsTriageNodeResult(tags, origin) then
    return
  end
  local modality = string.upper(trim(tags['Modality']))
  local bodyPart = string.upper(trim(tags['BodyPartExamined']))
  if ROUTED_MODALITIES[modality] and ROUTED_BODY_PARTS[bodyPart] then
    print('triage-route: sending ' .. instanceId .. ' (' .. modality .. ' ' .. bodyPart ..
          ') to ' .. TRIAGE_NODE)
    SendToModality(instanceId, TRIAGE_NODE)
  end
end
