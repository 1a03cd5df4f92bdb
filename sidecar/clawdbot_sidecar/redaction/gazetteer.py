# ruff: noqa: SIM905 (word lists read best as text)
"""Word lists behind the people detectors: names, street and place words, stop words.

The census name lists are loaded from `data/` once per process, on first use (a Redactor
is built once per policy, so no request waits for them), into `NameList`s: sorted arrays
of the names' hashes, about 750 KB for the 94,000 names where Python sets of the strings
took 10 MB in every client pod. Everything else here is small and written out, so a reader
can see exactly what a cue or a stop word is.
"""

from __future__ import annotations

import gzip
import io
from array import array
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from functools import cache
from importlib import resources
from typing import Final

__all__ = [
    "CN_COMPOUND_SURNAMES",
    "CN_GIVEN_CHARS",
    "CN_SURNAMES",
    "CN_UNCUED_SURNAMES",
    "NAME_STOP_WORDS",
    "STREET_SUFFIXES",
    "US_STATES",
    "NameList",
    "given_names",
    "is_given_name",
    "is_surname",
    "is_surname_word",
    "surnames",
]


class NameList:
    """A set of strings held as the sorted 64-bit hashes of its members.

    Membership is a hash and a binary search. The hashes are the process's own `hash()`
    of each string, computed when the list is built, so they agree with lookups in the same
    process whatever the hash seed. Two strings with the same 64-bit hash would make a
    non-member look like a member: about one chance in 10^14 per lookup for these lists.
    """

    __slots__ = ("_hashes",)

    def __init__(self, members: Iterable[str]) -> None:
        self._hashes = array("q", sorted({hash(m) for m in members}))

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        h = hash(key)
        hashes = self._hashes
        i = bisect_left(hashes, h)
        return i < len(hashes) and hashes[i] == h

    def __len__(self) -> int:
        return len(self._hashes)

    def __repr__(self) -> str:
        return f"NameList({len(self)} names)"


def _read_lines(name: str) -> Iterator[str]:
    # One line at a time: the list is kept as hashes, so its strings never all exist at once.
    data = resources.files(__package__).joinpath("data", name).read_bytes()
    if name.endswith(".gz"):
        data = gzip.decompress(data)
    for raw in io.BytesIO(data):
        line = raw.decode().strip()
        if line and not line.startswith("#"):
            yield line


@cache
def given_names() -> NameList:
    """Lower-case given names: the 1990 US Census lists plus names common elsewhere."""
    return NameList([*_read_lines("given_names.txt.gz"), *_read_lines("given_names_extra.txt")])


@cache
def surnames() -> NameList:
    """Lower-case surnames: the 1990 US Census list (88,799 names)."""
    return NameList(_read_lines("surnames.txt.gz"))


def _key(token: str) -> str:
    # The census spells O'Brien, McDonald and De La Cruz as OBRIEN, MCDONALD, DELACRUZ.
    return token.lower().replace("'", "").replace("\u2019", "")


def is_given_name(token: str) -> bool:
    """True when `token` (any case) is a known given name and not a common word."""
    key = _key(token)
    return key in given_names() and key not in NAME_STOP_WORDS


def is_surname(token: str) -> bool:
    """True when `token` (any case, hyphenated parts each) is a known surname and not a
    common word."""
    key = _key(token)
    if key in NAME_STOP_WORDS:
        return False
    if "-" in key:
        return all(part in surnames() or part in given_names() for part in key.split("-"))
    return key in surnames() or key in CN_PINYIN_SURNAMES


def is_surname_word(token: str) -> bool:
    """True when `token` is in the surname list, common word or not ("Brown", "King")."""
    return _key(token) in surnames()


# Capitalised words that start sentences, headings and product or place names, and that
# the census lists also hold as names ("Will", "Hope", "Street", "Patient"): never taken
# for a name on their own evidence. Lower case.
NAME_STOP_WORDS: Final = frozenset(
    """
    a about above after again against all also am an and any are as at be because been
    before being below between both but by can could did do does doing down during each few
    for from further had has have having he her here hers herself him himself his how i if
    in into is it its itself just me more most my myself no nor not now of off on once only
    or other our ours out over own same she should so some such than that the their theirs
    them then there these they this those through to too under until up very was we were
    what when where which while who whom why will with would you your yours yes ok okay
    please thanks thank hello hi dear sir madam team all everyone

    monday tuesday wednesday thursday friday saturday sunday today tomorrow yesterday
    january february march april may june july august september october november december
    jan feb mar apr jun jul aug sep sept oct nov dec spring summer autumn fall winter
    christmas easter

    patient patients doctor nurse client customer caller user member guest staff admin
    manager director officer agent support service services help desk account billing
    hospital clinic center centre medical health care healthcare pharmacy labs lab
    laboratory insurance bank group company inc corp corporation llc ltd limited co
    foundation institute university college school church department office
    street st avenue ave road rd lane ln drive dr boulevard blvd court ct place pl way
    park square hall house tower building floor room suite unit apt north south east west
    new old great little big general central national royal united american british
    first second third last next best good high low long short black white red blue green
    brown gray grey gold silver

    report summary note notes history plan assessment diagnosis discharge admission
    follow followup visit appointment order invoice ticket case issue request update status
    review result results test tests scan blood pressure heart rate dose tablet tablets
    morning evening night day week month year time date
    ok yes no true false none null error warning info debug
    """.split()
)

# Romanised Chinese surnames, for "Mr. Wang" and "Li Wei": most are in the census list
# too, these are the ones it lacks.
CN_PINYIN_SURNAMES: Final = frozenset(
    """
    zhou xu sun zhu hu guo luo zheng liang xie song tang han feng deng cao peng zeng xiao
    dong yuan pan yu jiang cai du ye cheng su wei lv lu ding ren shen yao cui zhong tan
    wang li zhang liu chen yang huang zhao wu ma gao lin he qin qiu xue yan lei hou long
    shi tao hao gong shao qian kong zhan yin fu fang bai zou meng xiong jia xia wen
    ouyang sima shangguan zhuge
    """.split()
)

# Street-type words (USPS Publication 28 suffixes and abbreviations, common British ones),
# lower case, without a trailing full stop.
STREET_SUFFIXES: Final = frozenset(
    """
    alley aly allee annex anx arcade arc avenue ave av bayou byu beach bch bend bnd bluff blf
    bluffs blfs bottom btm boulevard blvd branch br bridge brg brook brk brooks burg bg burgs
    bgs bypass byp camp cp canyon cyn cape cpe causeway cswy center ctr centers ctrs circle
    cir circles cirs cliff clf cliffs clfs club clb common cmn commons cmns corner cor
    corners cors course crse court ct courts cts cove cv coves cvs creek crk crescent cres
    crest crst crossing xing crossroad xrd crossroads xrds curve curv dale dl dam dm divide
    dv drive dr drives drs estate est estates ests expressway expy extension ext extensions
    exts fall falls fls ferry fry field fld fields flds flat flt flats flts ford frd fords
    frds forest frst forge frg forges frgs fork frk forks frks fort ft freeway fwy garden
    gdn gardens gdns gateway gtwy glen gln glens glns green grn greens grns grove grv groves
    grvs harbor hbr harbors hbrs haven hvn heights hts highway hwy hill hl hills hls hollow
    holw inlet inlt island is islands iss isle junction jct junctions jcts key ky keys kys
    knoll knl knolls knls lake lk lakes lks land landing lndg lane ln light lgt lights lgts
    loaf lf lock lck locks lcks lodge ldg loop mall manor mnr manors mnrs meadow mdw meadows
    mdws mews mill ml mills mls mission msn motorway mtwy mount mt mountain mtn mountains
    mtns neck nck orchard orch oval parade park parks parkway pkwy parkways pass passage
    psge path pike pine pne pines pnes place pl plain pln plains plns plaza plz point pt
    points pts port prt ports prts prairie pr radial radl ramp ranch rnch rapid rpd rapids
    rpds rest rst ridge rdg ridges rdgs river riv road rd roads rds route rte row rue run
    shoal shl shoals shls shore shr shores shrs skyway skwy spring spg springs spgs spur
    spurs square sq squares sqs station sta stravenue stra stream strm street st streets sts
    summit smt terrace ter throughway trwy trace trce track trak trafficway trfy trail trl
    trailer trlr tunnel tunl turnpike tpke underpass upas union un unions uns valley vly
    valleys vlys viaduct via view vw views vws village vlg villages vlgs ville vl vista vis
    walk walks wall way ways well wl wells wls close wynd rise quay embankment circus
    overpass opas
    """.split()
)

US_STATES: Final = frozenset(
    """
    AL AK AZ AR CA CO CT DE DC FL GA HI ID IL IN IA KS KY LA ME MD MA MI MN MS MO MT NE NV
    NH NJ NM NY NC ND OH OK OR PA RI SC SD TN TX UT VT VA WA WV WI WY PR GU VI AS MP
    """.split()
)

# The most common Chinese surnames (single characters), roughly by population.
CN_SURNAMES: Final = (
    "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶"
    "程苏魏吕丁任沈姚卢姜崔钟谭陆汪范金石廖贾夏韦付傅方白邹孟熊秦邱江尹薛闫阎段雷侯龙史陶黎"
    "贺顾毛郝龚邵万钱严覃武戴莫孔向汤常温康施文牛樊葛邢安齐易乔伍庞颜倪庄聂章鲁岳翟殷詹申欧"
    "耿关兰焦俞左柳甘祝包宁尚符舒阮柯纪梅童凌毕单季裴霍涂成苗谷盛曲翁冉骆蓝路游辛靳管柴蒙鲍"
    "华喻祁蒲房滕屈饶解牟艾尤阳时穆农司卓古吉缪简车项连芦麦褚娄窦戚岑景党宫费卜冷晏席卫米柏"
    "宗瞿桂全佟应臧闵苟邬边卞姬师和仇栾隋商刁沙荣巫寇桑郎甄丛仲虞敖巩明佘池查麻苑迟邝"
)

# Surnames that rarely open an ordinary word, for names found without a cue ("王小明").
CN_UNCUED_SURNAMES: Final = (
    "王李张刘陈杨赵吴徐孙朱胡郭何林罗郑梁谢宋唐韩冯邓曹彭曾肖董袁潘蒋蔡杜叶程苏魏吕丁沈姚卢"
    "姜崔钟谭陆汪范贾韦付傅邹孟熊秦邱尹薛闫段侯陶黎贺顾郝龚邵钱严覃戴莫孔汤施樊葛邢倪庄聂"
)

CN_COMPOUND_SURNAMES: Final = (
    "欧阳", "司马", "上官", "诸葛", "东方", "皇甫", "尉迟", "公孙", "慕容", "令狐", "长孙",
    "宇文", "司徒", "夏侯", "端木", "独孤", "南宫", "西门", "百里", "呼延", "轩辕", "澹台",
    "公冶", "太史", "申屠", "闻人", "钟离", "宗政", "濮阳", "淳于", "单于", "赫连", "万俟",
    "司空", "东郭", "拓跋",
)  # fmt: skip

# Characters common in Chinese given names (an uncued name needs both of its given-name
# characters from here; a cued one needs only Chinese characters).
CN_GIVEN_CHARS: Final = frozenset(
    "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英华玲红鹏辉婷宇浩欣怡佳晨雪梅琳鑫斌波峰建"
    "国文志海小晓丹萍燕飞亮林春云玉兰凤珍莉颖倩慧琴露瑶璐婧蕾薇茜晶冰宁博俊凯昊轩睿泽然子梓"
    "涵萱诗雨思彤悦嘉可馨妍琪瑞阳帅旭东升荣成永新德福庆生忠义仁礼信智勤龙虎彪豪坤岩松山川"
    "江河清源洪宏鸿远航健康乐天星晴月芬莲菊香美娇媛婉嫣琦璇瑾琛珊岚霖雯蓉萌楠榕桐杨柳森彬"
    "家振兴民伦伯仲立正世长金银铭锋钧铁石坚毅达通进贵宝财发富丰顺安泰和祥吉喜夏秋冬学书楷"
    "翔鹤鹰鸣凡友朋亦如若依莹芸蔚蕊卿沁潇瀚淑贤惠娅婕姝钰铃宸烨煜灿炜熙琰玮哲晗昕曦暄蓓蔓"
    "艺影微诚杉彦朗韬骏驰腾琼娥素翠菲芝蓝青紫丝雅舒静盈莎娴卫兵武斌亚男女仪"
)
