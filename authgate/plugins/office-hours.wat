;; office-hours: allow requests only between `config.from_hour` (inclusive) and
;; `config.to_hour` (exclusive), UTC, on the weekdays in `config.weekdays` (0 = Monday).
;; Config: {"from_hour": 9, "to_hour": 18, "weekdays": ["0","1","2","3","4"]}.
;; Otherwise 403 "outside office hours".
(module
  (memory (export "memory") 2)
  (data (i32.const 16) "\nhour\t") ;; $hour: 6 bytes
  (data (i32.const 30) "\nweekday\t") ;; $wd: 9 bytes
  (data (i32.const 47) "\nconfig.from_hour\t") ;; $from: 18 bytes
  (data (i32.const 73) "\nconfig.to_hour\t") ;; $to: 16 bytes
  (data (i32.const 97) "\nconfig.weekdays\t") ;; $days: 17 bytes
  (data (i32.const 122) "{\"allow\":true}") ;; $allow: 14 bytes
  (data (i32.const 144) "{\"allow\":false,\"status\":403,\"body\":\"outside office hours\"}") ;; $deny: 58 bytes

  ;; ABI v1 (see PLUGINS.md): the request text lands at 1024; ap_alloc remembers its length.
  (global $inlen (mut i32) (i32.const 0))
  (global $vlen (mut i32) (i32.const 0))
  (func (export "ap_abi_version") (result i32) (i32.const 1))
  (func (export "ap_alloc") (param $len i32) (result i32)
    (global.set $inlen (local.get $len))
    (i32.const 1024))
  ;; $n bytes at $a equal $n bytes at $b?
  (func $eq (param $a i32) (param $b i32) (param $n i32) (result i32)
    (block $no
      (loop $l
        (if (i32.eqz (local.get $n)) (then (return (i32.const 1))))
        (br_if $no (i32.ne (i32.load8_u (local.get $a)) (i32.load8_u (local.get $b))))
        (local.set $a (i32.add (local.get $a) (i32.const 1)))
        (local.set $b (i32.add (local.get $b) (i32.const 1)))
        (local.set $n (i32.sub (local.get $n) (i32.const 1)))
        (br $l)))
    (i32.const 0))
  ;; The value of the line whose "\nkey\t" is at $k ($klen bytes): its address, or -1;
  ;; its length goes to $vlen.
  (func $find (param $k i32) (param $klen i32) (result i32)
    (local $i i32) (local $end i32) (local $v i32) (local $stop i32)
    (local.set $stop (i32.add (i32.const 1024) (global.get $inlen)))
    (local.set $i (i32.const 1024))
    (local.set $end (i32.sub (local.get $stop) (local.get $klen)))
    (block $notfound
      (loop $scan
        (br_if $notfound (i32.gt_s (local.get $i) (local.get $end)))
        (if (call $eq (local.get $i) (local.get $k) (local.get $klen))
          (then
            (local.set $v (i32.add (local.get $i) (local.get $klen)))
            (local.set $i (local.get $v))
            (block $eol
              (loop $l
                (br_if $eol (i32.ge_u (local.get $i) (local.get $stop)))
                (br_if $eol (i32.eq (i32.load8_u (local.get $i)) (i32.const 10)))
                (local.set $i (i32.add (local.get $i) (i32.const 1)))
                (br $l)))
            (global.set $vlen (i32.sub (local.get $i) (local.get $v)))
            (return (local.get $v))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $scan)))
    (i32.const -1))
  ;; Is the $n bytes at $x one of the comma-separated entries at $list ($llen bytes)?
  (func $member (param $x i32) (param $n i32) (param $list i32) (param $llen i32) (result i32)
    (local $i i32) (local $start i32) (local $end i32)
    (local.set $start (local.get $list))
    (local.set $i (local.get $list))
    (local.set $end (i32.add (local.get $list) (local.get $llen)))
    (loop $l
      (if (i32.or (i32.ge_u (local.get $i) (local.get $end))
                  (i32.eq (i32.load8_u (local.get $i)) (i32.const 44)))
        (then
          (if (i32.eq (i32.sub (local.get $i) (local.get $start)) (local.get $n))
            (then (if (call $eq (local.get $start) (local.get $x) (local.get $n))
              (then (return (i32.const 1))))))
          (if (i32.ge_u (local.get $i) (local.get $end)) (then (return (i32.const 0))))
          (local.set $start (i32.add (local.get $i) (i32.const 1)))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $l))
    (i32.const 0))
  ;; Decimal digits at $p ($n bytes) → number, or -1.
  (func $atoi (param $p i32) (param $n i32) (result i32)
    (local $v i32) (local $c i32)
    (if (i32.or (i32.eqz (local.get $n)) (i32.gt_u (local.get $n) (i32.const 9)))
      (then (return (i32.const -1))))
    (loop $l
      (local.set $c (i32.sub (i32.load8_u (local.get $p)) (i32.const 48)))
      (if (i32.gt_u (local.get $c) (i32.const 9)) (then (return (i32.const -1))))
      (local.set $v (i32.add (i32.mul (local.get $v) (i32.const 10)) (local.get $c)))
      (local.set $p (i32.add (local.get $p) (i32.const 1)))
      (local.set $n (i32.sub (local.get $n) (i32.const 1)))
      (br_if $l (local.get $n)))
    (local.get $v))
  (func $ret (param $p i32) (param $n i32) (result i64)
    (i64.or (i64.shl (i64.extend_i32_u (local.get $p)) (i64.const 32))
            (i64.extend_i32_u (local.get $n))))

  (func $num (param $k i32) (param $klen i32) (result i32)
    (local $v i32)
    (local.set $v (call $find (local.get $k) (local.get $klen)))
    (if (i32.lt_s (local.get $v) (i32.const 0)) (then (return (i32.const -1))))
    (call $atoi (local.get $v) (global.get $vlen)))
  (func (export "ap_decide") (param $p i32) (param $n i32) (result i64)
    (local $h i32) (local $from i32) (local $to i32) (local $d i32) (local $dlen i32) (local $days i32)
    (local.set $h (call $num (i32.const 16) (i32.const 6)))
    (local.set $from (call $num (i32.const 47) (i32.const 18)))
    (local.set $to (call $num (i32.const 73) (i32.const 16)))
    (if (i32.or (i32.or (i32.lt_s (local.get $h) (i32.const 0)) (i32.lt_s (local.get $from) (i32.const 0)))
                (i32.lt_s (local.get $to) (i32.const 0)))
      (then (return (call $ret (i32.const 144) (i32.const 58)))))
    (if (i32.or (i32.lt_s (local.get $h) (local.get $from)) (i32.ge_s (local.get $h) (local.get $to)))
      (then (return (call $ret (i32.const 144) (i32.const 58)))))
    (local.set $d (call $find (i32.const 30) (i32.const 9)))
    (local.set $dlen (global.get $vlen))
    (local.set $days (call $find (i32.const 97) (i32.const 17)))
    (if (i32.or (i32.lt_s (local.get $d) (i32.const 0)) (i32.lt_s (local.get $days) (i32.const 0)))
      (then (return (call $ret (i32.const 144) (i32.const 58)))))
    (if (call $member (local.get $d) (local.get $dlen) (local.get $days) (global.get $vlen))
      (then (return (call $ret (i32.const 122) (i32.const 14)))))
    (call $ret (i32.const 144) (i32.const 58)))
)
