"""The console's two languages: English source strings and their Chinese (the default).
A string without a translation shows in English, so a missing one is visible, not blank."""

from __future__ import annotations

ZH: dict[str, str] = {
    "exnode console": "exnode 控制台",
    "Overview": "总览", "Catalog": "目录", "Requests": "申请", "Grants": "授权",
    "Query": "查询", "Exchange log": "交换日志", "Quarantine": "隔离区",
    "Conflicts": "冲突", "Corrections": "纠错", "Statistics": "统计", "Ledger": "台账",
    "Alerts": "告警", "Audit trail": "审计记录", "Accounts": "账户", "Members": "成员",
    "Log in": "登录", "Log out": "退出", "Name": "账户名", "Password": "密码",
    "Language": "语言", "Role": "角色", "Search": "搜索", "Resource": "资源",
    "Provider": "提供方", "Share type": "共享类型", "Held at": "存放位置",
    "Version": "版本", "Versions": "版本", "Data elements": "数据元",
    "Sample": "样例", "Metadata": "元数据", "Status": "状态", "Due": "期限",
    "Overdue": "已超期", "Consumer": "使用方", "Service": "服务", "Purpose": "用途",
    "Approve": "同意", "Reject": "拒绝", "Reason": "理由", "Revoke": "撤销",
    "Until": "有效期至", "Fields": "字段", "Filter": "条件", "Limit": "条数",
    "Download": "下载", "Verify": "核验", "Upload records (CSV)": "上传待核验记录 (CSV)",
    "Key field": "主键字段", "Fields to check": "核验字段", "Package": "数据包",
    "Event": "事件", "Peer": "对端", "Kind": "类型", "Size": "大小", "Time": "时间",
    "Trace": "追踪", "Action": "操作", "Actor": "操作人", "Target": "对象",
    "Outcome": "结果", "Detail": "详情", "Client": "来源", "Month": "月份",
    "online": "在线", "offline": "离线", "Last contact": "最后联系",
    "Outbox backlog": "待发送积压", "Inbox waiting": "待处理积压",
    "Freshness": "数据时效", "stale": "过期", "fresh": "及时", "stopped": "已停止",
    "Open alerts": "未处理告警", "Acknowledge": "确认", "No open alerts": "没有未处理告警",
    "Problems": "问题", "No problems": "无问题", "none": "无",
    "wrong name or password": "账户名或密码错误",
    "You are not allowed to see this page": "您无权查看此页面",
    "You are not allowed to do this": "您无权执行此操作",
    "The form was stale; please try again": "页面已过期，请重试",
    "Resolve": "处理", "Accept": "采纳", "Release": "放行", "Drop": "丢弃",
    "Packages per resource": "各资源数据包数", "Bytes per resource": "各资源字节数",
    "Rows per resource": "各资源数据行数",
    "Packages per member": "各成员数据包数", "Packages per day": "每日数据包数",
    "Answer times of requests (hours)": "申请办理时长（小时）",
    "Freshness compliance": "时效达标率", "Packages": "数据包", "Bytes": "字节",
    "Rows": "行数", "in": "入", "out": "出", "Add account": "新增账户",
    "Unlock": "解锁", "Disable": "停用", "Enable": "启用", "Verify the trail": "校验审计链",
    "intact": "完整", "broken": "已损坏", "Separation of duties": "三员分立",
    "Tracked items": "跟踪事项", "Deadline": "期限", "State": "状态",
    "Item": "事项", "Raised": "发生时间", "Message": "说明", "all": "全部",
    "Run query": "执行查询", "Masked per this node's grant": "按本节点授权脱敏",
    "No grant for a sample": "无授权，不显示样例", "Results": "结果",
    "found": "找到", "match": "一致", "Node": "节点", "center": "中心", "bureau": "委办局",
    "Approve request": "同意申请", "Answer as provider": "提供方答复",
    "Nothing here": "暂无记录", "Saved": "已保存", "Done": "已完成", "Error": "错误",
    "Change role": "修改角色", "Show": "查看", "Export": "导出",
    "The console is not set up for separation of duties": "控制台尚未满足三员分立",
    "account locked": "账户已锁定",
    "signature": "签名", "more": "更多", "since": "自", "Change password": "修改密码",
    "Current password": "当前密码", "New password": "新密码", "Again": "再次输入",
    "At least 12 characters from three of: lower case, upper case, digits, other; not "
    "containing the account name. Every session of this account ends.":
        "至少 12 位，包含小写字母、大写字母、数字、其他字符中的三类，且不含账户名；"
        "修改后该账户的所有会话结束。",
    "The three administrators' accounts are managed on the node: exnode console add NAME "
    "--role sysadmin|secadmin|auditor":
        "三员（系统管理员、安全管理员、审计员）账户在本机用 exnode console 命令管理",
    "This page needs the center": "此页面仅在中心可用",
}

# states as the services name them
ZH.update({
    "open": "待处理", "review": "中心审查", "provider": "提供方答复", "answer": "提供方答复",
    "granted": "已授权", "refused": "未同意", "rejected": "已拒绝", "accepted": "已采纳",
    "sent": "已提交", "active": "有效", "revoked": "已撤销", "expired": "已过期",
    "grant-revoked": "授权已撤销", "acknowledged": "已确认", "cleared": "已解除",
    "reporting": "正常上报", "silent": "停止上报", "pending": "待回执",
    "delivered": "已送达", "retried": "已重新提交", "dropped": "已丢弃",
    "superseded": "已被替代", "resolved": "已处理",
})

TABLES = {"zh": ZH}


def gettext(lang: str, text: str) -> str:
    return TABLES.get(lang, {}).get(text, text)
