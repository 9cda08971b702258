"""SMPP 3.4 numbers: command ids, command_status codes, TLV tags, message states, bit fields.

The protocol tables are taken from smpplib (never retyped here); only the handful of
bit-field constants are written by hand, each with the spec section that defines it.
"""

from __future__ import annotations

import enum
from typing import Any

import smpplib.command_codes
import smpplib.consts as _c

_COMMANDS: dict[str, int] = smpplib.command_codes.commands
_TAGS: dict[str, int] = _c.OPTIONAL_PARAMS
_DESCRIPTIONS: dict[int, Any] = getattr(_c, "DESCRIPTIONS", {})


class CommandId(enum.IntEnum):
    """SMPP 3.4 command_id values (section 5.1.2.1); bit 31 set marks a response."""

    GENERIC_NACK = _COMMANDS["generic_nack"]
    BIND_RECEIVER = _COMMANDS["bind_receiver"]
    BIND_RECEIVER_RESP = _COMMANDS["bind_receiver_resp"]
    BIND_TRANSMITTER = _COMMANDS["bind_transmitter"]
    BIND_TRANSMITTER_RESP = _COMMANDS["bind_transmitter_resp"]
    QUERY_SM = _COMMANDS["query_sm"]
    QUERY_SM_RESP = _COMMANDS["query_sm_resp"]
    SUBMIT_SM = _COMMANDS["submit_sm"]
    SUBMIT_SM_RESP = _COMMANDS["submit_sm_resp"]
    DELIVER_SM = _COMMANDS["deliver_sm"]
    DELIVER_SM_RESP = _COMMANDS["deliver_sm_resp"]
    UNBIND = _COMMANDS["unbind"]
    UNBIND_RESP = _COMMANDS["unbind_resp"]
    REPLACE_SM = _COMMANDS["replace_sm"]
    REPLACE_SM_RESP = _COMMANDS["replace_sm_resp"]
    CANCEL_SM = _COMMANDS["cancel_sm"]
    CANCEL_SM_RESP = _COMMANDS["cancel_sm_resp"]
    BIND_TRANSCEIVER = _COMMANDS["bind_transceiver"]
    BIND_TRANSCEIVER_RESP = _COMMANDS["bind_transceiver_resp"]
    OUTBIND = _COMMANDS["outbind"]
    ENQUIRE_LINK = _COMMANDS["enquire_link"]
    ENQUIRE_LINK_RESP = _COMMANDS["enquire_link_resp"]
    SUBMIT_MULTI = _COMMANDS["submit_multi"]
    SUBMIT_MULTI_RESP = _COMMANDS["submit_multi_resp"]
    ALERT_NOTIFICATION = _COMMANDS["alert_notification"]
    DATA_SM = _COMMANDS["data_sm"]
    DATA_SM_RESP = _COMMANDS["data_sm_resp"]


class Status(enum.IntEnum):
    """command_status / error codes (SMPP 3.4 section 5.1.3)."""

    ESME_ROK = _c.SMPP_ESME_ROK
    ESME_RINVMSGLEN = _c.SMPP_ESME_RINVMSGLEN
    ESME_RINVCMDLEN = _c.SMPP_ESME_RINVCMDLEN
    ESME_RINVCMDID = _c.SMPP_ESME_RINVCMDID
    ESME_RINVBNDSTS = _c.SMPP_ESME_RINVBNDSTS
    ESME_RALYBND = _c.SMPP_ESME_RALYBND
    ESME_RINVPRTFLG = _c.SMPP_ESME_RINVPRTFLG
    ESME_RINVREGDLVFLG = _c.SMPP_ESME_RINVREGDLVFLG
    ESME_RSYSERR = _c.SMPP_ESME_RSYSERR
    ESME_RINVSRCADR = _c.SMPP_ESME_RINVSRCADR
    ESME_RINVDSTADR = _c.SMPP_ESME_RINVDSTADR
    ESME_RINVMSGID = _c.SMPP_ESME_RINVMSGID
    ESME_RBINDFAIL = _c.SMPP_ESME_RBINDFAIL
    ESME_RINVPASWD = _c.SMPP_ESME_RINVPASWD
    ESME_RINVSYSID = _c.SMPP_ESME_RINVSYSID
    ESME_RCANCELFAIL = _c.SMPP_ESME_RCANCELFAIL
    ESME_RREPLACEFAIL = _c.SMPP_ESME_RREPLACEFAIL
    ESME_RMSGQFUL = _c.SMPP_ESME_RMSGQFUL
    ESME_RINVSERTYP = _c.SMPP_ESME_RINVSERTYP
    ESME_RINVNUMDESTS = _c.SMPP_ESME_RINVNUMDESTS
    ESME_RINVDLNAME = _c.SMPP_ESME_RINVDLNAME
    ESME_RINVDESTFLAG = _c.SMPP_ESME_RINVDESTFLAG
    ESME_RINVSUBREP = _c.SMPP_ESME_RINVSUBREP
    ESME_RINVESMCLASS = _c.SMPP_ESME_RINVESMCLASS
    ESME_RCNTSUBDL = _c.SMPP_ESME_RCNTSUBDL
    ESME_RSUBMITFAIL = _c.SMPP_ESME_RSUBMITFAIL
    ESME_RINVSRCTON = _c.SMPP_ESME_RINVSRCTON
    ESME_RINVSRCNPI = _c.SMPP_ESME_RINVSRCNPI
    ESME_RINVDSTTON = _c.SMPP_ESME_RINVDSTTON
    ESME_RINVDSTNPI = _c.SMPP_ESME_RINVDSTNPI
    ESME_RINVSYSTYP = _c.SMPP_ESME_RINVSYSTYP
    ESME_RINVREPFLAG = _c.SMPP_ESME_RINVREPFLAG
    ESME_RINVNUMMSGS = _c.SMPP_ESME_RINVNUMMSGS
    ESME_RTHROTTLED = _c.SMPP_ESME_RTHROTTLED
    ESME_RINVSCHED = _c.SMPP_ESME_RINVSCHED
    ESME_RINVEXPIRY = _c.SMPP_ESME_RINVEXPIRY
    ESME_RINVDFTMSGID = _c.SMPP_ESME_RINVDFTMSGID
    ESME_RX_T_APPN = _c.SMPP_ESME_RX_T_APPN
    ESME_RX_P_APPN = _c.SMPP_ESME_RX_P_APPN
    ESME_RX_R_APPN = _c.SMPP_ESME_RX_R_APPN
    ESME_RQUERYFAIL = _c.SMPP_ESME_RQUERYFAIL
    ESME_RINVOPTPARSTREAM = _c.SMPP_ESME_RINVOPTPARSTREAM
    ESME_ROPTPARNOTALLWD = _c.SMPP_ESME_ROPTPARNOTALLWD
    ESME_RINVPARLEN = _c.SMPP_ESME_RINVPARLEN
    ESME_RMISSINGOPTPARAM = _c.SMPP_ESME_RMISSINGOPTPARAM
    ESME_RINVOPTPARAMVAL = _c.SMPP_ESME_RINVOPTPARAMVAL
    ESME_RDELIVERYFAILURE = _c.SMPP_ESME_RDELIVERYFAILURE
    ESME_RUNKNOWNERR = _c.SMPP_ESME_RUNKNOWNERR


class Tag(enum.IntEnum):
    """Optional parameter (TLV) tags (SMPP 3.4 section 5.3.2)."""

    DEST_ADDR_SUBUNIT = _TAGS["dest_addr_subunit"]
    DEST_NETWORK_TYPE = _TAGS["dest_network_type"]
    DEST_BEARER_TYPE = _TAGS["dest_bearer_type"]
    DEST_TELEMATICS_ID = _TAGS["dest_telematics_id"]
    SOURCE_ADDR_SUBUNIT = _TAGS["source_addr_subunit"]
    SOURCE_NETWORK_TYPE = _TAGS["source_network_type"]
    SOURCE_BEARER_TYPE = _TAGS["source_bearer_type"]
    SOURCE_TELEMATICS_ID = _TAGS["source_telematics_id"]
    QOS_TIME_TO_LIVE = _TAGS["qos_time_to_live"]
    PAYLOAD_TYPE = _TAGS["payload_type"]
    ADDITIONAL_STATUS_INFO_TEXT = _TAGS["additional_status_info_text"]
    RECEIPTED_MESSAGE_ID = _TAGS["receipted_message_id"]
    MS_MSG_WAIT_FACILITIES = _TAGS["ms_msg_wait_facilities"]
    PRIVACY_INDICATOR = _TAGS["privacy_indicator"]
    SOURCE_SUBADDRESS = _TAGS["source_subaddress"]
    DEST_SUBADDRESS = _TAGS["dest_subaddress"]
    USER_MESSAGE_REFERENCE = _TAGS["user_message_reference"]
    USER_RESPONSE_CODE = _TAGS["user_response_code"]
    SOURCE_PORT = _TAGS["source_port"]
    DESTINATION_PORT = _TAGS["destination_port"]
    SAR_MSG_REF_NUM = _TAGS["sar_msg_ref_num"]
    LANGUAGE_INDICATOR = _TAGS["language_indicator"]
    SAR_TOTAL_SEGMENTS = _TAGS["sar_total_segments"]
    SAR_SEGMENT_SEQNUM = _TAGS["sar_segment_seqnum"]
    SC_INTERFACE_VERSION = _TAGS["sc_interface_version"]
    CALLBACK_NUM_PRES_IND = _TAGS["callback_num_pres_ind"]
    CALLBACK_NUM_ATAG = _TAGS["callback_num_atag"]
    NUMBER_OF_MESSAGES = _TAGS["number_of_messages"]
    CALLBACK_NUM = _TAGS["callback_num"]
    DPF_RESULT = _TAGS["dpf_result"]
    SET_DPF = _TAGS["set_dpf"]
    MS_AVAILABILITY_STATUS = _TAGS["ms_availability_status"]
    NETWORK_ERROR_CODE = _TAGS["network_error_code"]
    MESSAGE_PAYLOAD = _TAGS["message_payload"]
    DELIVERY_FAILURE_REASON = _TAGS["delivery_failure_reason"]
    MORE_MESSAGES_TO_SEND = _TAGS["more_messages_to_send"]
    MESSAGE_STATE = _TAGS["message_state"]
    USSD_SERVICE_OP = _TAGS["ussd_service_op"]
    DISPLAY_TIME = _TAGS["display_time"]
    SMS_SIGNAL = _TAGS["sms_signal"]
    MS_VALIDITY = _TAGS["ms_validity"]
    ALERT_ON_MESSAGE_DELIVERY = _TAGS["alert_on_message_delivery"]
    ITS_REPLY_TYPE = _TAGS["its_reply_type"]
    ITS_SESSION_INFO = _TAGS["its_session_info"]


class MessageState(enum.IntEnum):
    """message_state values (SMPP 3.4 section 5.2.28)."""

    ENROUTE = _c.SMPP_MESSAGE_STATE_ENROUTE
    DELIVERED = _c.SMPP_MESSAGE_STATE_DELIVERED
    EXPIRED = _c.SMPP_MESSAGE_STATE_EXPIRED
    DELETED = _c.SMPP_MESSAGE_STATE_DELETED
    UNDELIVERABLE = _c.SMPP_MESSAGE_STATE_UNDELIVERABLE
    ACCEPTED = _c.SMPP_MESSAGE_STATE_ACCEPTED
    UNKNOWN = _c.SMPP_MESSAGE_STATE_UNKNOWN
    REJECTED = _c.SMPP_MESSAGE_STATE_REJECTED


def status_name(code: int) -> str:
    """Symbolic name of a command_status ("ESME_RTHROTTLED"), or "0x%08X" when unknown."""
    try:
        return Status(code).name
    except ValueError:
        return f"0x{code:08X}"


def status_description(code: int) -> str:
    """Human text for a command_status, from smpplib's table; falls back to status_name()."""
    text = _DESCRIPTIONS.get(code)
    if isinstance(text, str) and text and text != "<Desc Not Set>":
        return text
    return status_name(code)


RESPONSE_BIT = 0x80000000  # section 5.1.2.1: response command_ids have bit 31 set


def is_response_id(command_id: int) -> bool:
    """True when command_id denotes a response PDU (bit 31 set, SMPP 3.4 section 5.1.2.1)."""
    return bool(command_id & RESPONSE_BIT)


# interface_version / sc_interface_version (section 5.2.4)
INTERFACE_VERSION_34 = 0x34

# esm_class bits (section 5.2.12): messaging mode xxxxxx11, message type xx1111xx,
# GSM features 11xxxxxx.
ESM_MODE_MASK = 0x03
ESM_TYPE_MASK = 0x3C
ESM_DELIVERY_RECEIPT = 0x04  # SMSC delivery receipt (type bits == 0001)
ESM_INTERMEDIATE = 0x20  # intermediate delivery notification (type bits == 1000)
ESM_UDHI = 0x40  # short_message starts with a User Data Header
ESM_REPLY_PATH = 0x80


def is_delivery_receipt(esm_class: int) -> bool:
    """True when an esm_class marks a deliver_sm/data_sm as an SMSC delivery receipt."""
    return (esm_class & ESM_TYPE_MASK) == ESM_DELIVERY_RECEIPT


# registered_delivery bits (section 5.2.17): bits 1..0 ask for an SMSC delivery receipt.
REG_RECEIPT_MASK = 0x03
REG_RECEIPT_NONE = 0  # no receipt
REG_RECEIPT_FINAL = 1  # receipt on final outcome, success or failure
REG_RECEIPT_FAILURE = 2  # receipt on failure only
REG_INTERMEDIATE = 0x10  # bit 4: intermediate notification requested

# data_coding values (section 5.2.19)
DC_DEFAULT = 0x00  # SMSC default alphabet (usually GSM 03.38)
DC_IA5 = 0x01  # IA5 / ASCII
DC_BINARY = 0x02  # 8-bit binary
DC_LATIN1 = 0x03  # ISO-8859-1
DC_BINARY2 = 0x04  # 8-bit binary (the other code point)
DC_UCS2 = 0x08  # UCS2 (ISO/IEC-10646), big-endian
