#!/usr/bin/perl
# mail-dkim-arc.pl -- the Mail::DKIM side of scripts/arc-peer (ARC, RFC 8617).
#
# Glue only: every ARC decision (chain structure, canonicalization, signing,
# verifying) is made by Mail::DKIM::ARC::Verifier / Mail::DKIM::ARC::Signer.
# Public keys never come from DNS: Mail::DKIM::DNS::resolver() is given an
# object whose send() answers TXT queries from a table, as real
# Net::DNS::Packet objects, so Mail::DKIM's own key fetching and parsing run.
#
#   mail-dkim-arc.pl verify KEYTSV MSGFILE...
#       KEYTSV lines: "<selector>._domainkey.<domain>" TAB "<TXT value>"
#       prints one line per MSGFILE, in order:
#           <n> TAB <result> TAB <detail>
#       result is Mail::DKIM's own word (pass, fail, invalid, none, temperror...)
#   mail-dkim-arc.pl seal KEYPEM DOMAIN SELECTOR SRVID CHAIN TIMESTAMP IN OUT
#       CHAIN: pass|fail|none; TIMESTAMP: seconds, or "-" for now.
#       Writes ARC-Seal, ARC-Message-Signature, ARC-Authentication-Results
#       (CRLF, in that order) to OUT. Exit 0 sealed, 3 signer skipped the
#       message (reason on stderr), 2 setup error.
#
# SPDX-License-Identifier: MIT OR Apache-2.0
use strict;
use warnings;

use Mail::DKIM 1.0;
use Mail::DKIM::DNS;
use Mail::DKIM::PrivateKey;
use Mail::DKIM::ARC::Verifier;
use Mail::DKIM::ARC::Signer;
use Mail::DKIM::TextWrap;    # the signer folds its fields, as its docs advise
use Net::DNS;

{
    # A stand-in for Net::DNS::Resolver holding a fixed set of TXT records.
    package ArcPeer::TableResolver;

    sub new {
        my ( $class, %records ) = @_;
        return bless { records => \%records, last_error => 'NOERROR' }, $class;
    }

    sub send {
        my ( $self, $qname, $qtype ) = @_;
        $qtype = 'A' unless defined $qtype;
        my $name = lc $qname;
        $name =~ s/\.+\z//;
        my $reply = Net::DNS::Packet->new( $name, $qtype, 'IN' );
        $reply->header->qr(1);
        $reply->header->aa(1);
        my $txt = $self->{records}{$name};
        if ( !defined $txt ) {
            $reply->header->rcode('NXDOMAIN');
        }
        else {
            $reply->header->rcode('NOERROR');
            if ( uc $qtype eq 'TXT' ) {
                # One TXT RR made of <=255-octet strings, as a zone would hold it.
                my @strings;
                push @strings, substr( $txt, 0, 255, '' ) while length $txt;
                @strings = ('') unless @strings;
                $reply->push(
                    answer => Net::DNS::RR->new(
                        name    => $name,
                        type    => 'TXT',
                        ttl     => 60,
                        txtdata => \@strings,
                    )
                );
            }
        }
        $self->{last_error} = 'NOERROR';
        return $reply;
    }

    sub errorstring { return $_[0]{last_error} }
}

sub read_file {
    my ($path) = @_;
    open my $fh, '<:raw', $path or die "cannot read $path: $!\n";
    local $/;
    my $data = <$fh>;
    close $fh;
    return defined $data ? $data : '';
}

sub one_line {
    my ($text) = @_;
    return '-' unless defined $text && length $text;
    $text =~ s/\s+/ /g;
    $text =~ s/[^\x20-\x7e]/?/g;
    return $text;
}

sub load_key_table {
    my ($path) = @_;
    my %records;
    open my $fh, '<:raw', $path or die "cannot read $path: $!\n";
    while ( my $line = <$fh> ) {
        $line =~ s/\r?\n\z//;
        next if $line eq '';
        my ( $name, $value ) = split /\t/, $line, 2;
        $records{ lc $name } = defined $value ? $value : '';
    }
    close $fh;
    return %records;
}

sub cmd_verify {
    my ( $keytsv, @files ) = @_;
    die "usage: $0 verify KEYTSV MSGFILE...\n" unless defined $keytsv;
    Mail::DKIM::DNS::resolver(
        ArcPeer::TableResolver->new( load_key_table($keytsv) ) );
    my $n = 0;
    for my $file (@files) {
        $n++;
        my $message = read_file($file);
        my $arc     = Mail::DKIM::ARC::Verifier->new();
        my $ok      = eval {
            $arc->PRINT($message);
            $arc->CLOSE;
            1;
        };
        if ( !$ok ) {
            print "$n\terror\t", one_line("exception: $@"), "\n";
            next;
        }
        my $result = $arc->result;
        $result = 'none' unless defined $result;
        my $why = $arc->{details};    # the reason the verifier stopped, when it gives one
        my $detail = $result eq 'none' ? 'none' : $arc->result_detail;
        $detail = "$why; $detail" if defined $why && length $why && $result ne 'pass';
        print "$n\t", one_line($result), "\t", one_line($detail), "\n";
    }
    return 0;
}

sub cmd_seal {
    die "usage: $0 seal KEYPEM DOMAIN SELECTOR SRVID CHAIN TIMESTAMP IN OUT\n"
      unless @_ == 8;
    my ( $keypem, $domain, $selector, $srvid, $chain, $timestamp, $in, $out ) = @_;
    my $pem = read_file($keypem);

    # Mail::DKIM 1.20230212 ARC signs rsa-sha256 only (Signer.pm dies on any
    # other Algorithm). The Python side refuses Ed25519 before we get here;
    # this is the backstop.
    require Crypt::OpenSSL::RSA;
    my $rsa = eval { Crypt::OpenSSL::RSA->new_private_key($pem) };
    if ( !$rsa ) {
        print STDERR "mail-dkim: $keypem is not an RSA private key "
          . "(Mail::DKIM ARC signs rsa-sha256 only)\n";
        return 2;
    }
    my $key = Mail::DKIM::PrivateKey->load( Cork => $rsa );

    my $signer = Mail::DKIM::ARC::Signer->new(
        Algorithm => 'rsa-sha256',
        Chain     => $chain,
        Domain    => $domain,
        SrvId     => $srvid,
        Selector  => $selector,
        Key       => $key,
        ( $timestamp ne '-' ? ( Timestamp => $timestamp ) : () ),
    );
    $signer->PRINT( read_file($in) );
    $signer->CLOSE;
    my $result = $signer->result;
    if ( !defined $result || $result ne 'sealed' ) {
        print STDERR "mail-dkim: not sealed: ",
          one_line( $signer->result_detail ), "\n";
        return 3;
    }
    my $fields = $signer->as_string;
    $fields =~ s/\015?\012/\015\012/g;
    open my $fh, '>:raw', $out or die "cannot write $out: $!\n";
    print $fh $fields;
    close $fh or die "cannot write $out: $!\n";
    return 0;
}

my $mode = shift @ARGV;
if ( !defined $mode ) {
    die "usage: $0 verify|seal ...\n";
}
elsif ( $mode eq 'verify' ) {
    exit cmd_verify(@ARGV);
}
elsif ( $mode eq 'seal' ) {
    exit cmd_seal(@ARGV);
}
elsif ( $mode eq 'version' ) {
    print "$Mail::DKIM::VERSION\n";
    exit 0;
}
else {
    die "unknown mode '$mode' (verify|seal|version)\n";
}
