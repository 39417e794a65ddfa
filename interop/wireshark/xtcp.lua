-- Wireshark dissector for xtcp's UDP datagrams.
--
-- One UDP datagram carries one of (first byte, proto/src/codec/registry.rs):
--
--   0x01         XTCP segment (spec/xtcp.md §2): a 12-byte XTCP header
--                (version, XTCP flags, reserved, 64-bit connection id), then
--                an unmodified RFC 9293 TCP header, options and payload.
--                The XTCP header is decoded here; the rest goes to
--                Wireshark's own TCP dissector (flags, options, SACK, seq/ack
--                analysis, retransmissions, stream reassembly, TLS above it).
--   0xA0         relay UDP address service request  (spec/relay.md §12.1)
--   0xA1         relay UDP address service response (spec/relay.md §12.2)
--   0xA2         punch probe                         (spec/direct.md §4.3)
--   0xA3..0xAF   reserved for non-XTCP datagrams, unassigned
--
-- GSO/GRO. A capture on a host that sends with UDP GSO (or receives with
-- UDP GRO) holds "super-datagrams": several XTCP segments of one stride back
-- to back in one UDP payload, which the kernel cuts (or joined) at the
-- stride. They are recognised (every chunk starts with the same XTCP header
-- prefix and its checksum verifies) and each segment is decoded on its own
-- (xtcp.gso.segments, xtcp.gso.stride).
--
-- Found by a heuristic on every UDP datagram (exact structure; for XTCP also
-- the checksum, see the preferences) and on the UDP ports of the preference
-- "xtcp.udp_ports".
--
-- The checksum. XTCP's TCP checksum covers the whole UDP payload (XTCP
-- header included) instead of an IP pseudo-header (spec/xtcp.md §2.5). This
-- dissector verifies it (xtcp.checksum.status); Wireshark's TCP checksum
-- check (preference tcp.check_checksum, off by default) would compute it over
-- the wrong bytes and must stay off.
--
-- TCP analysis. The TCP dissector keys its conversations on the IP
-- addresses of the capture (the UDP datagram's) and the ports in the TCP
-- header, which xtcp sets to its UDP sockets' ports; so every XTCP
-- connection is a TCP stream of its own and seq/ack analysis, SACK and
-- retransmission marks work as for kernel TCP.
--
-- Install: see README.md next to this file.

local VERSION = 1
local XTCP_HEADER_LEN = 12
local TCP_HEADER_LEN = 20

local T_REQUEST = 0xA0
local T_RESPONSE = 0xA1
local T_PROBE = 0xA2

local REQUEST_LEN = 48
local TOKEN_LEN = 16
local PROBE_LEN = 54

local EXID_CHALLENGE = 0x5843
local EXID_RESPONSE = 0x5852

------------------------------------------------------------------------
-- Protocols and fields
------------------------------------------------------------------------

local xtcp = Proto("xtcp", "XTCP (TCP over UDP)")
local relay_udp = Proto("xtcp_relay_udp", "xtcp relay UDP address service")
local probe = Proto("xtcp_probe", "xtcp punch probe")

local checksum_status = { [0] = "Bad", [1] = "Good", [2] = "Unverified" }
local path_kinds = { [EXID_CHALLENGE] = "PATH_CHALLENGE", [EXID_RESPONSE] = "PATH_RESPONSE" }

local xf = {
    version = ProtoField.uint8("xtcp.version", "Version", base.DEC),
    flags = ProtoField.uint8("xtcp.flags", "XTCP flags", base.HEX),
    reserved = ProtoField.uint16("xtcp.reserved", "Reserved", base.HEX),
    conn_id = ProtoField.uint64("xtcp.conn_id", "Connection ID", base.HEX),
    checksum = ProtoField.uint16("xtcp.checksum", "Checksum", base.HEX),
    checksum_calc = ProtoField.uint16("xtcp.checksum.calculated", "Calculated checksum", base.HEX),
    checksum_status = ProtoField.uint8("xtcp.checksum.status", "Checksum status", base.DEC,
        checksum_status),
    path = ProtoField.uint16("xtcp.path", "Path validation", base.HEX, path_kinds),
    path_token = ProtoField.uint64("xtcp.path.token", "Path token", base.HEX),
    payload_len = ProtoField.uint32("xtcp.len", "TCP payload length", base.DEC),
    gso_segments = ProtoField.uint32("xtcp.gso.segments", "Segments", base.DEC),
    gso_stride = ProtoField.uint32("xtcp.gso.stride", "Stride", base.DEC),
}
xtcp.fields = xf

local families = { [4] = "IPv4", [6] = "IPv6" }
local rtypes = { [T_REQUEST] = "address request", [T_RESPONSE] = "address response" }
local rf = {
    type = ProtoField.uint8("xtcp_relay_udp.type", "Type", base.HEX, rtypes),
    token = ProtoField.bytes("xtcp_relay_udp.token", "Token"),
    nonce = ProtoField.uint64("xtcp_relay_udp.nonce", "Nonce", base.HEX),
    padding = ProtoField.bytes("xtcp_relay_udp.padding", "Padding"),
    family = ProtoField.uint8("xtcp_relay_udp.family", "Address family", base.DEC, families),
    addr = ProtoField.ipv4("xtcp_relay_udp.addr", "Observed address"),
    addr6 = ProtoField.ipv6("xtcp_relay_udp.addr6", "Observed address"),
    port = ProtoField.uint16("xtcp_relay_udp.port", "Observed port", base.DEC),
}
relay_udp.fields = rf

local probe_roles = { [1] = "host", [2] = "guest" }
local pf = {
    type = ProtoField.uint8("xtcp_probe.type", "Type", base.HEX),
    attempt = ProtoField.uint32("xtcp_probe.attempt", "Attempt", base.DEC),
    role = ProtoField.uint8("xtcp_probe.role", "Sender role", base.DEC, probe_roles),
    nonce = ProtoField.uint64("xtcp_probe.nonce", "Nonce", base.HEX),
    echo = ProtoField.uint64("xtcp_probe.echo", "Echo", base.HEX),
    tag = ProtoField.bytes("xtcp_probe.tag", "Tag (HMAC-SHA256)"),
}
probe.fields = pf

local ex = {
    bad_checksum = ProtoExpert.new("xtcp.checksum.bad.expert", "Bad XTCP checksum",
        expert.group.CHECKSUM, expert.severity.ERROR),
    bad_version = ProtoExpert.new("xtcp.version.bad", "Unknown XTCP version",
        expert.group.MALFORMED, expert.severity.ERROR),
    bad_reserved = ProtoExpert.new("xtcp.reserved.nonzero", "XTCP reserved bytes are not zero",
        expert.group.MALFORMED, expert.severity.ERROR),
    bad_offset = ProtoExpert.new("xtcp.data_offset.bad", "TCP data offset out of range",
        expert.group.MALFORMED, expert.severity.ERROR),
    path = ProtoExpert.new("xtcp.path.expert", "XTCP path validation",
        expert.group.SEQUENCE, expert.severity.CHAT),
}
xtcp.experts = { ex.bad_checksum, ex.bad_version, ex.bad_reserved, ex.bad_offset, ex.path }

local rex = {
    malformed = ProtoExpert.new("xtcp_relay_udp.malformed", "Malformed address service datagram",
        expert.group.MALFORMED, expert.severity.ERROR),
}
relay_udp.experts = { rex.malformed }
local pex = {
    malformed = ProtoExpert.new("xtcp_probe.malformed", "Malformed punch probe",
        expert.group.MALFORMED, expert.severity.ERROR),
}
probe.experts = { pex.malformed }

xtcp.prefs.udp_ports = Pref.range("UDP ports", "",
    "UDP ports always decoded as xtcp datagrams (XTCP, address service, probes), "
        .. "besides the heuristic", 65535)
xtcp.prefs.heuristic = Pref.bool("Heuristic on all UDP", true,
    "Recognise xtcp datagrams on any UDP port by their first byte and structure")
xtcp.prefs.heur_checksum = Pref.bool("Heuristic requires a valid checksum", true,
    "The heuristic takes a datagram starting with 0x01 as XTCP only if its XTCP checksum "
        .. "verifies (a corrupted segment is then left to other dissectors)")
xtcp.prefs.verify_checksum = Pref.bool("Verify the XTCP checksum", true,
    "Compute the RFC 1071 checksum over the whole UDP payload (spec/xtcp.md §2.5)")

------------------------------------------------------------------------
-- Helpers
------------------------------------------------------------------------

-- Folded one's complement sum (RFC 1071) of the whole tvb, as 16-bit
-- big-endian words (an odd last byte padded with zero). Plain arithmetic, so
-- that it runs on any Lua version Wireshark ships.
local function ones_sum(tvb)
    local s = tvb:raw(0, tvb:len())
    local n = #s
    local sum = 0
    local i = 1
    local byte = string.byte
    while i + 15 <= n do
        local a1, a2, b1, b2, c1, c2, d1, d2, e1, e2, f1, f2, g1, g2, h1, h2 = byte(s, i, i + 15)
        sum = sum + (a1 + b1 + c1 + d1 + e1 + f1 + g1 + h1) * 256
            + a2 + b2 + c2 + d2 + e2 + f2 + g2 + h2
        i = i + 16
    end
    while i + 1 <= n do
        local a, b = byte(s, i, i + 1)
        sum = sum + a * 256 + b
        i = i + 2
    end
    if i == n then
        sum = sum + byte(s, i) * 256
    end
    while sum > 0xffff do
        sum = (sum % 0x10000) + math.floor(sum / 0x10000)
    end
    return sum
end

-- Whether the datagram's XTCP checksum verifies: the sum over everything,
-- checksum included, is 0xffff.
local function checksum_ok(tvb)
    return ones_sum(tvb) == 0xffff
end

-- The checksum the sender should have written: NOT of the sum with the
-- checksum field (bytes 28-29) taken as zero.
local function checksum_expected(tvb)
    local sum = ones_sum(tvb) + (0xffff - tvb(28, 2):uint()) -- remove the field (one's complement)
    while sum > 0xffff do
        sum = (sum % 0x10000) + math.floor(sum / 0x10000)
    end
    return 0xffff - sum
end

-- Structure of an XTCP segment (spec/xtcp.md §2.6 checks 1-5 and 7).
local function xtcp_shape_ok(tvb)
    local len = tvb:len()
    if len < XTCP_HEADER_LEN + TCP_HEADER_LEN or tvb(0, 1):uint() ~= VERSION then
        return false
    end
    if tvb(2, 2):uint() ~= 0 then
        return false
    end
    local doff = math.floor(tvb(24, 1):uint() / 16)
    return doff >= 5 and XTCP_HEADER_LEN + 4 * doff <= len
end

-- The stride of a GSO/GRO super-datagram, or nil for a single segment:
-- the smallest s such that the tvb cuts into chunks of s bytes (the last
-- one may be shorter, but at least 32) that are each a well-formed XTCP
-- segment with a verified checksum and the first one's version, flags,
-- reserved bytes and connection id.
local function gso_stride(tvb)
    local len = tvb:len()
    local min = XTCP_HEADER_LEN + TCP_HEADER_LEN
    if len < 2 * min then
        return nil
    end
    local s = tvb:raw(0, len)
    local prefix = s:sub(1, XTCP_HEADER_LEN)
    local pos = s:find(prefix, min + 1, true)
    while pos do
        local stride = pos - 1
        local ok = (len % stride == 0) or (len % stride >= min)
        local off = 0
        while ok and off < len do
            local n = math.min(stride, len - off)
            local chunk = tvb(off, n):tvb()
            ok = s:sub(off + 1, off + XTCP_HEADER_LEN) == prefix and xtcp_shape_ok(chunk)
                and ones_sum(chunk) == 0xffff
            off = off + stride
        end
        if ok then
            return stride
        end
        pos = s:find(prefix, pos + 1, true)
    end
    return nil
end

local function response_shape_ok(tvb)
    local len = tvb:len()
    if len < 10 then
        return false
    end
    local fam = tvb(9, 1):uint()
    return (fam == 4 and len == 16) or (fam == 6 and len == 28)
end

local function request_shape_ok(tvb)
    if tvb:len() ~= REQUEST_LEN then
        return false
    end
    local pad = tvb:raw(1 + TOKEN_LEN + 8)
    return not pad:find("[^%z]")
end

------------------------------------------------------------------------
-- XTCP
------------------------------------------------------------------------

local tcp_dissector = Dissector.get("tcp")

-- Finds the kind-253 path validation option in the TCP option area of
-- `tvb` (the XTCP datagram) and adds it to `tree`.
local function add_path_option(tvb, pinfo, tree)
    local doff = math.floor(tvb(24, 1):uint() / 16)
    local i = XTCP_HEADER_LEN + TCP_HEADER_LEN
    local stop = XTCP_HEADER_LEN + 4 * doff
    while i < stop do
        local kind = tvb(i, 1):uint()
        if kind == 0 then
            return
        elseif kind == 1 then
            i = i + 1
        else
            if i + 1 >= stop then
                return
            end
            local olen = tvb(i + 1, 1):uint()
            if olen < 2 or i + olen > stop then
                return
            end
            if kind == 253 and olen == 12 then
                local exid = tvb(i + 2, 2):uint()
                if path_kinds[exid] then
                    local t = tree:add(xf.path, tvb(i + 2, 2))
                    t:add(xf.path_token, tvb(i + 4, 8))
                    t:add_proto_expert_info(ex.path, path_kinds[exid])
                    pinfo.cols.info:append(" " .. path_kinds[exid])
                end
            end
            i = i + olen
        end
    end
end

local function dissect_segment(tvb, pinfo, tree)
    local len = tvb:len()
    local t = tree:add(xtcp, tvb(0, math.min(len, XTCP_HEADER_LEN)))
    if len < 1 then
        return 0
    end
    local vi = t:add(xf.version, tvb(0, 1))
    if tvb(0, 1):uint() ~= VERSION then
        vi:add_proto_expert_info(ex.bad_version)
        pinfo.cols.protocol = "XTCP"
        pinfo.cols.info = "XTCP, unknown version " .. tvb(0, 1):uint()
        return len
    end
    if len < XTCP_HEADER_LEN + TCP_HEADER_LEN then
        t:add_proto_expert_info(ex.bad_offset, "Datagram shorter than 32 bytes")
        pinfo.cols.protocol = "XTCP"
        pinfo.cols.info = "XTCP, truncated"
        return len
    end
    t:add(xf.flags, tvb(1, 1))
    local ri = t:add(xf.reserved, tvb(2, 2))
    if tvb(2, 2):uint() ~= 0 then
        ri:add_proto_expert_info(ex.bad_reserved)
    end
    local cid = tvb(4, 8):uint64()
    t:add(xf.conn_id, tvb(4, 8))
    t:append_text(", Conn ID: 0x" .. cid:tohex())

    local doff = math.floor(tvb(24, 1):uint() / 16)
    if doff < 5 or XTCP_HEADER_LEN + 4 * doff > len then
        t:add_proto_expert_info(ex.bad_offset)
    end

    local ck = t:add(xf.checksum, tvb(28, 2))
    if xtcp.prefs.verify_checksum then
        local good = checksum_ok(tvb)
        ck:add(xf.checksum_status, good and 1 or 0):set_generated()
        if good then
            ck:append_text(" [correct]")
        else
            ck:add(xf.checksum_calc, checksum_expected(tvb)):set_generated()
            ck:append_text(" [incorrect]")
            ck:add_proto_expert_info(ex.bad_checksum)
        end
    else
        ck:add(xf.checksum_status, 2):set_generated()
    end
    t:add(xf.payload_len, math.max(0, len - XTCP_HEADER_LEN - 4 * doff)):set_generated()

    if doff >= 5 and XTCP_HEADER_LEN + 4 * doff <= len then
        tcp_dissector:call(tvb(XTCP_HEADER_LEN):tvb(), pinfo, tree)
        add_path_option(tvb, pinfo, t)
    end
    -- TCP wrote "TCP"; a protocol above it (TLS) keeps its name.
    if tostring(pinfo.cols.protocol) == "TCP" then
        pinfo.cols.protocol = "XTCP"
    end
    return len
end

-- One XTCP segment, or a GSO/GRO super-datagram of several (`stride`, if
-- known already).
local function dissect_xtcp(tvb, pinfo, tree, stride)
    local len = tvb:len()
    stride = stride or gso_stride(tvb)
    if not stride then
        return dissect_segment(tvb, pinfo, tree)
    end
    local count = math.ceil(len / stride)
    local g = tree:add(xtcp, tvb(), "XTCP GSO/GRO super-datagram")
    g:add(xf.gso_segments, count):set_generated()
    g:add(xf.gso_stride, stride):set_generated()
    g:append_text(string.format(": %d segments, stride %d", count, stride))
    local off = 0
    while off < len do
        if off > 0 then
            -- Keep the earlier segments' summaries: TCP clears the column.
            pinfo.cols.info:append(" | ")
            pinfo.cols.info:fence()
        end
        dissect_segment(tvb(off, math.min(stride, len - off)):tvb(), pinfo, tree)
        off = off + stride
    end
    return len
end

------------------------------------------------------------------------
-- Relay UDP address service
------------------------------------------------------------------------

local function dissect_relay_udp(tvb, pinfo, tree)
    local len = tvb:len()
    local ty = tvb(0, 1):uint()
    pinfo.cols.protocol = "XTCP-RELAY-UDP"
    local t = tree:add(relay_udp, tvb())
    t:add(rf.type, tvb(0, 1))
    if ty == T_REQUEST then
        pinfo.cols.info = "Address request"
        if len < 1 + TOKEN_LEN + 8 then
            t:add_proto_expert_info(rex.malformed, "Request shorter than 48 bytes")
            return len
        end
        t:add(rf.token, tvb(1, TOKEN_LEN))
        t:add(rf.nonce, tvb(1 + TOKEN_LEN, 8))
        pinfo.cols.info:append(", nonce 0x" .. tvb(1 + TOKEN_LEN, 8):uint64():tohex())
        if len > 1 + TOKEN_LEN + 8 then
            t:add(rf.padding, tvb(1 + TOKEN_LEN + 8))
        end
        if not request_shape_ok(tvb) then
            t:add_proto_expert_info(rex.malformed,
                "A request is exactly 48 bytes with zero padding (spec/relay.md §12.1)")
        end
    else
        pinfo.cols.info = "Address response"
        if len < 10 then
            t:add_proto_expert_info(rex.malformed, "Response truncated")
            return len
        end
        t:add(rf.nonce, tvb(1, 8))
        t:add(rf.family, tvb(9, 1))
        local fam = tvb(9, 1):uint()
        pinfo.cols.info:append(", nonce 0x" .. tvb(1, 8):uint64():tohex())
        if fam == 4 and len >= 16 then
            t:add(rf.addr, tvb(10, 4))
            t:add(rf.port, tvb(14, 2))
            pinfo.cols.info:append(", observed " .. tostring(tvb(10, 4):ipv4()) .. ":"
                .. tvb(14, 2):uint())
        elseif fam == 6 and len >= 28 then
            t:add(rf.addr6, tvb(10, 16))
            t:add(rf.port, tvb(26, 2))
            pinfo.cols.info:append(", observed [" .. tostring(tvb(10, 16):ipv6()) .. "]:"
                .. tvb(26, 2):uint())
        end
        if not response_shape_ok(tvb) then
            t:add_proto_expert_info(rex.malformed,
                "A response is 16 (IPv4) or 28 (IPv6) bytes (spec/relay.md §12.2)")
        end
    end
    return len
end

------------------------------------------------------------------------
-- Punch probe
------------------------------------------------------------------------

local function dissect_probe(tvb, pinfo, tree)
    local len = tvb:len()
    pinfo.cols.protocol = "XTCP-PROBE"
    local t = tree:add(probe, tvb())
    t:add(pf.type, tvb(0, 1))
    if len < 5 then
        t:add_proto_expert_info(pex.malformed, "Probe truncated")
        pinfo.cols.info = "Punch probe (truncated)"
        return len
    end
    t:add(pf.attempt, tvb(1, 4))
    local info = "Punch probe, attempt " .. tvb(1, 4):uint()
    if len >= 6 then
        t:add(pf.role, tvb(5, 1))
        info = info .. " from the " .. (probe_roles[tvb(5, 1):uint()] or "?")
    end
    if len >= 14 then
        t:add(pf.nonce, tvb(6, 8))
    end
    if len >= 22 then
        t:add(pf.echo, tvb(14, 8))
        if tvb(14, 8):uint64() ~= UInt64(0) then
            info = info .. " (echo)"
        end
    end
    if len > 22 then
        t:add(pf.tag, tvb(22, math.min(len - 22, 32)))
    end
    pinfo.cols.info = info
    if len ~= PROBE_LEN then
        t:add_proto_expert_info(pex.malformed, "A probe is exactly 54 bytes (spec/direct.md §4.3.2)")
    end
    return len
end

------------------------------------------------------------------------
-- Dispatch
------------------------------------------------------------------------

-- Any datagram from a configured port: by its first byte.
function xtcp.dissector(tvb, pinfo, tree)
    if tvb:len() < 1 then
        return 0
    end
    local b = tvb(0, 1):uint()
    if b == T_REQUEST or b == T_RESPONSE then
        return dissect_relay_udp(tvb, pinfo, tree)
    elseif b == T_PROBE then
        return dissect_probe(tvb, pinfo, tree)
    elseif b >= 0xA3 and b <= 0xAF then
        pinfo.cols.protocol = "XTCP"
        pinfo.cols.info = string.format("Unassigned side-channel datagram 0x%02x", b)
        tree:add(xtcp, tvb()):append_text(" (unassigned first byte, spec/relay.md §12.5)")
        return tvb:len()
    end
    return dissect_xtcp(tvb, pinfo, tree)
end

-- Any UDP datagram: only what has the exact structure of one of the formats.
local function heuristic(tvb, pinfo, tree)
    if not xtcp.prefs.heuristic or tvb:len() < 1 then
        return false
    end
    local b = tvb(0, 1):uint()
    if b == VERSION then
        if not xtcp_shape_ok(tvb) then
            return false
        end
        local stride = gso_stride(tvb)
        if xtcp.prefs.heur_checksum and not stride and not checksum_ok(tvb) then
            return false
        end
        dissect_xtcp(tvb, pinfo, tree, stride)
        return true
    elseif b == T_REQUEST then
        if not request_shape_ok(tvb) then
            return false
        end
        dissect_relay_udp(tvb, pinfo, tree)
        return true
    elseif b == T_RESPONSE then
        if not response_shape_ok(tvb) then
            return false
        end
        dissect_relay_udp(tvb, pinfo, tree)
        return true
    elseif b == T_PROBE then
        if tvb:len() ~= PROBE_LEN or probe_roles[tvb(5, 1):uint()] == nil then
            return false
        end
        dissect_probe(tvb, pinfo, tree)
        return true
    end
    return false
end

xtcp:register_heuristic("udp", heuristic)

local udp_port = DissectorTable.get("udp.port")
local registered_ports = ""

function xtcp.prefs_changed()
    local want = tostring(xtcp.prefs.udp_ports)
    if want == registered_ports then
        return
    end
    if registered_ports ~= "" then
        udp_port:remove(registered_ports, xtcp)
    end
    if want ~= "" then
        udp_port:add(want, xtcp)
    end
    registered_ports = want
end
